"""The official `orgo` Python SDK, unmodified, against a running deskd (sections 1 and 2).

Run by tests/api_sdk.rs with DESKD_BASE (http://127.0.0.1:PORT/api) and DESKD_KEY set.
Prints one line per step; exits non-zero on the first mismatch.
"""

import json
import os
import sys
import urllib.request

from orgo import Computer, Project

BASE = os.environ["DESKD_BASE"]
KEY = os.environ["DESKD_KEY"]
HW = os.environ.get("DESKD_HW") == "1"


def step(name):
    print(f"sdk: {name}", flush=True)


step("Project(name) creates the project through POST /projects")
project = Project("sdk-project", api_key=KEY, base_api_url=BASE)
assert project.id, "no project id"

step("Project(name) again finds it through GET /projects (list key 'projects')")
again = Project("sdk-project", api_key=KEY, base_api_url=BASE)
assert again.id == project.id, (again.id, project.id)

step("Computer(project=name) creates a computer (201, id/ram/cpu/os/resolution)")
computer = Computer(project="sdk-project", api_key=KEY, base_api_url=BASE, verbose=False, ram=8, cpu=2)
assert computer.computer_id, "no computer id"
assert computer.ram == 8 and computer.cpu == 2, (computer.ram, computer.cpu)

step("status() reads GET /computers/{id}")
info = computer.status()
assert info["id"] == computer.computer_id
assert info["instance_details"]["resolution"] == "1280x720x24"
assert info["status"] != "running" or HW, info["status"]
if not HW:
    assert info["status"] == "error" and "tests/rig/serve" in info["status_reason"], info

step("Project.list_computers() reads `desktops` of GET /projects/{id}")
listed = project.list_computers()
assert [c["id"] for c in listed] == [computer.computer_id], listed
assert project.get_computer("nope") is None

step("actions on a computer that is not running fail with the contract's message")
if info["status"] != "running":
    try:
        computer.bash("echo hi")
    except Exception as e:  # the SDK raises Exception(error message)
        assert "Desktop instance not available" in str(e), str(e)
    else:
        sys.exit("bash on a stopped computer did not fail")

step("Computer(template=...) survives the legacy builds/latest lookup failing")
templated = Computer(project=project, api_key=KEY, base_api_url=BASE, verbose=False, template="my-template")
assert templated.computer_id

step("Computer(template=NAME) launches the newest version of a published template by its bare name")


def publish(doc):
    req = urllib.request.Request(f"{BASE}/templates", data=json.dumps(doc).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)


for version in ("1.0.0", "1.2.0"):
    publish({"api_version": "orgo.ai/v1", "template": {"name": "sdk-app", "version": version}})
from_template = Computer(project=project, api_key=KEY, base_api_url=BASE, verbose=False, template="sdk-app")
ref = from_template.status()["template_ref"]
assert ref == "default/sdk-app@1.2.0", ref

step("Computer(template=NAME) of a template with a required secret is refused naming it")
publish({"api_version": "orgo.ai/v1", "template": {"name": "sdk-secret", "version": "1.0.0"},
         "secrets": [{"name": "sdk-token"}], "env": {"SDK_TOKEN": {"secret": "sdk-token"}}})
try:
    Computer(project=project, api_key=KEY, base_api_url=BASE, verbose=False, template="sdk-secret")
except Exception as e:
    assert "sdk-token" in str(e), str(e)
else:
    sys.exit("a computer of a template with a required secret was created without it")
from_template.destroy()

step("restart() and destroy()")
if not HW:
    try:
        computer.restart()
    except Exception as e:
        assert "tests/rig/serve" in str(e), str(e)
    else:
        sys.exit("restart on a host without vmx/svm did not fail")
computer.destroy()
templated.destroy()
assert project.list_computers() == []

step("Project.destroy() deletes through DELETE /projects/{id}")
project.destroy()
print("sdk: all steps passed", flush=True)
