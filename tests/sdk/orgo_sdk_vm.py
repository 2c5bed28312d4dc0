"""The official `orgo` Python SDK, unmodified, driving a real computer (a VM) through deskd.

Run by tests/sdk-rig-e2e with DESKD_BASE (http://127.0.0.1:PORT/api) and DESKD_KEY set, against a
daemon that can boot VMs (inside the rig on hosts without VMX/SVM). One computer, few calls: guests
in the rig run 50-100x slower than on hardware. Prints one line per step with its time; exits
non-zero on the first mismatch.
"""

import os
import sys
import time

from orgo import Computer

BASE = os.environ["DESKD_BASE"]
KEY = os.environ["DESKD_KEY"]
WIDTH, HEIGHT = 1280, 720
START = time.monotonic()


def step(name):
    print(f"sdk-vm: [{time.monotonic() - START:7.1f} s] {name}", flush=True)


# The daemon's 503 says "Try again in a moment": a slow guest (the rig runs them ~100x slower than
# native) can be briefly unreachable while it starts a heavy program. Polls retry it like any
# client should; a guest that stays unreachable still fails the poll at its deadline.
UNREACHABLE = "Could not reach the desktop"


def poll(what, check, limit_s, every_s=2.0):
    """Calls check() until it returns a true value (returned) or limit_s passes (failure)."""
    deadline = time.monotonic() + limit_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as e:  # the SDK raises plain Exception with the API's error message
            if UNREACHABLE not in str(e):
                raise
            step(f"{what}: the desktop was briefly unreachable ({e}); retrying")
            last = e
        else:
            if last:
                return last
        time.sleep(every_s)
    sys.exit(f"sdk-vm: FAILED: {what} (last: {last!r})")


# Given a computer (tests/sdk/rig_api_flow.py hands over its live clone, which saves the rig a
# cold boot), the SDK attaches to it; otherwise it creates one. Creation through the SDK is also
# covered without a VM by tests/api_sdk.rs.
EXISTING = os.environ.get("DESKD_COMPUTER_ID")
if EXISTING:
    step(f"Computer(computer_id={EXISTING}) attaches to a running computer (a live clone)")
    computer = Computer(computer_id=EXISTING, api_key=KEY, base_api_url=BASE, verbose=False)
    assert computer.computer_id == EXISTING, computer.computer_id
else:
    step("Computer(project=...) creates the workspace and a computer (POST /projects, POST /computers)")
    computer = Computer(project="sdk-vm", api_key=KEY, base_api_url=BASE, verbose=False)
    assert computer.computer_id, "no computer id"
created = computer.status()
step(f"computer {computer.computer_id}: status {created['status']}")
assert created["status"] in ("creating", "starting", "running"), created


def colours_of(img):
    found = img.convert("RGB").getcolors(maxcolors=1 << 20)
    return (1 << 20) + 1 if found is None else len(found)


# `running` means the desktop is usable (the agent's /health `ready`: X, the window manager, the
# panel drawn, the desktop mapped), so the first screenshot, taken the moment the daemon's wait for
# the booting computer ends, already shows the desktop: no polling for it.
step("screenshot() right after create (the daemon waits until the desktop is ready)")
image = computer.screenshot()
step(f"screenshot: {image.size[0]}x{image.size[1]} {image.mode}, {colours_of(image)} colours")
assert image.size == (WIDTH, HEIGHT), image.size
assert computer.status()["status"] == "running"
assert colours_of(image) > 16, (
    f"the first screenshot once the computer is running is (nearly) uniform "
    f"({colours_of(image)} colours): `running` came before the desktop was drawn"
)
step("the first screenshot shows a desktop")

step('bash("echo hi")')
out = computer.bash("echo hi")
assert out.strip() == "hi", repr(out)

step('exec("print(1+1)")')
res = computer.exec("print(1+1)")
assert res.get("success") is True and res.get("output", "").strip() == "2", res

step("open a terminal window (lxterminal), wait until it is mapped and focused")
computer.bash("rm -f /tmp/typed.txt; setsid lxterminal --title=sdk-e2e >/dev/null 2>&1 &")
poll(
    "the terminal window appears",
    lambda: "sdk-e2e" in computer.bash("xwininfo -root -tree | grep sdk-e2e || true"),
    300,
)
# Give the shell inside the terminal time to print its prompt before typing into it.
computer.wait(5)

step('type() a command into the terminal, key("Enter")')
r = computer.type("echo typed-by-sdk > /tmp/typed.txt")
assert r.get("success") is True, r
r = computer.key("Enter")
assert r.get("success") is True, r
poll("the typed command wrote /tmp/typed.txt",
     lambda: computer.bash("cat /tmp/typed.txt 2>/dev/null").strip() == "typed-by-sdk", 120)
step("bash reads back what the typed command wrote")

step("left_click, drag, scroll succeed")
for name, result in (
    ("left_click", computer.left_click(WIDTH // 2, HEIGHT // 2)),
    ("drag", computer.drag(100, 100, 300, 200)),
    ("scroll", computer.scroll("down", 3)),
):
    assert result.get("success") is True, (name, result)

step("restart(): a new boot, the VNC password rotates and the desktop comes back")
before = computer.status()["vnc_password"]
boot_before = computer.bash("cat /proc/sys/kernel/random/boot_id").strip()
t0 = time.monotonic()
r = computer.restart()
assert r.get("success") is True, r
out = computer.bash("echo back")  # waits while the computer restarts
assert out.strip() == "back", repr(out)
after = computer.status()
assert after["status"] == "running", after["status"]
assert after["vnc_password"] != before, "vnc_password did not rotate"
boot_after = computer.bash("cat /proc/sys/kernel/random/boot_id").strip()
assert boot_after and boot_after != boot_before, f"restart did not boot the guest anew ({boot_before})"
assert computer.status().get("instance_details", {}).get("saved_vm_bytes") is None, "restart kept a saved VM"
step(f"restarted in {time.monotonic() - t0:.0f} s: a new boot ({boot_before[:8]} -> {boot_after[:8]})")

step("destroy()")
computer.destroy()
try:
    computer.status()
except Exception as e:  # the SDK raises Exception(error message)
    assert "not found" in str(e).lower(), str(e)
else:
    sys.exit("sdk-vm: FAILED: the computer still exists after destroy()")
step("all steps passed")
