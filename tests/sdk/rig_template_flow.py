#!/usr/bin/env python3
"""A template built into a golden snapshot and launched from it, through deskd in the rig (issue 14).

Run by tests/sdk-rig-e2e after the API flow (or alone: `rig_template_flow.py --info-dir DIR`), plain
HTTP over the daemon's Unix socket with the API key, in the style of rig_api_flow.py:

  publish default/rig-template@1.0.0 (a build-time inline file, two `build.run` steps, an
  `on_first_boot` hook, a literal `env`; a .deb through `build.apt` and a wheel through `build.pip`
  from local mirrors this flow serves (tests/sdk/package_mirror.py), an app whose service serves
  the build-time file with an HTTP health check, whose watch restarts it when stopped, and an
  autostart program); build it and
  follow GET .../build/events (SSE) until it closes: phases boot, install, snapshot, ready, each
  step's output lines; GET .../build is ready with build_time_ms; a second build is `reused`;
  launch two computers with POST /computers {template_ref}: each reaches running restored from the
  snapshot (far sooner than the cold boot of the build VM in this same run), has the file, the run
  steps' and the hook's output, the env, the packages, the app's service answering, and a hostname (deskd-<instance_id>) and machine-id of its
  own; the template's required secret, given per launch, is in /root/.env (0600, root) and in a
  runtime file, another runtime file is there, and `on_resume` ran once after the restore, after
  both (a launch without the secret is a 400 naming it); the template's autostart stream (its key an
  optional secret) reaches a real RTMP receiver (ffmpeg on this host) from the launch given the key,
  and the other launch's log says it was not started; with both launches running, the files checks
  (rig_files_flow.check_files on the first, its workspace upload reaching both; RIG_FILES_FLOW=0
  leaves them out); one launch stopped (on_shutdown runs first) and started (a cold boot:
  on_every_boot runs, on_resume does not; RIG_TEMPLATE_COLD_START=0 leaves it out); POST
  /templates/run answers for the built template and DELETE /templates/run removes it;
  build computers never show in GET /computers. A computer created after the build goes through the API flow's power steps (rig_api_flow.power_steps: a
  reboot inside the guest, stop, start with the VMM killed during the boot, delete). Prints build time, launch times and the cold boot
  time of the same run side by side. Exits 1 on the first mismatch; 77 (skipped) only if the build
  failed for want of a network, which this template (no package steps) must not.
"""

import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rig_api_flow import Failed, UnixHTTP, bash, expect, poll, power_steps, run_flow, step  # noqa: E402

NAME, VERSION = "rig-template", "1.0.0"
REF = f"default/{NAME}@{VERSION}"
HELLO = "hello from the golden snapshot\nsecond line with 'quotes' and $dollars\n"
TEMPLATE = {
    "api_version": "orgo.ai/v1",
    "template": {"name": NAME, "version": VERSION, "description": "rig e2e of issue 14"},
    "env": {"RIG_TEMPLATE_GREETING": "hi there"},
    "build": {"run": [
        "mkdir -p /var/lib/rig-template && echo built-by-run > /var/lib/rig-template/run.out",
        "echo \"run as $(id -un)\"; uname -r | tee -a /var/lib/rig-template/run.out",
    ]},
    "files": [
        {"to": "/opt/rig-template/hello.txt", "inline": HELLO, "mode": "0640"},
        {"to": "~/Desktop/from-template.txt", "inline": "on the desktop\n"},
    ],
    "hooks": {"on_first_boot": "date +%s > /var/lib/rig-template/first-boot; echo first boot hook ran"},
}
# Packages from the local mirrors (tests/sdk/package_mirror.py; tests/sdk-rig-e2e points the
# daemon's [build] at them): a .deb through build.apt, a wheel through build.pip, and an app whose
# service serves a build-time file, with an HTTP health check the build waits for.
# RIG_TEMPLATE_PACKAGES=0 leaves them out.
PACKAGES = os.environ.get("RIG_TEMPLATE_PACKAGES", "1") != "0"
APP_PORT = 8199
if PACKAGES:
    import package_mirror  # noqa: E402
    TEMPLATE["build"]["apt"] = [package_mirror.APT_PACKAGE]
    TEMPLATE["build"]["pip"] = [package_mirror.PIP_PACKAGE]
    TEMPLATE["apps"] = [{
        "name": "hello", "title": "the template's web app",
        "services": [{"name": "http", "restart": "always",
                      "run": f"python3 -m http.server {APP_PORT} --bind 127.0.0.1 --directory /opt/rig-template"}],
        # The build waits for it; from then on a watch in the guest restarts the service after
        # three failed checks in a row.
        "health": {"type": "http", "url": f"http://127.0.0.1:{APP_PORT}/hello.txt", "every": 2, "retries": 2,
                   "on_fail": "restart_service:http"},
        # Runs in the X session as the desktop user: once in the build (so in the golden
        # snapshot), again at a cold boot.
        "autostart": [{"run": 'xdpyinfo > /dev/null && echo "$(id -un) $DISPLAY" >> ~/autostart.log', "delay": 1}],
    }]
# Files in and out (rig_files_flow.check_files) on the two launches; RIG_FILES_FLOW=0 leaves them out.
FILES = os.environ.get("RIG_FILES_FLOW", "1") != "0"
# The launch-time parts (a required secret, runtime files, on_resume); RIG_TEMPLATE_SECRETS=0
# leaves them out.
SECRETS = os.environ.get("RIG_TEMPLATE_SECRETS", "1") != "0"
if SECRETS:
    TEMPLATE["env"]["RIG_TOKEN"] = {"secret": "rig-token"}
    TEMPLATE["secrets"] = [{"name": "rig-token", "description": "a per-computer token (rig e2e)"}]
    TEMPLATE["files"] += [
        {"to": "~/runtime.txt", "inline": "written at launch\n", "when": "runtime"},
        {"to": "/etc/rig-template-token", "from": "secret://rig-token", "mode": "0600", "when": "runtime"},
    ]
    # After the restore, /root/.env and the runtime files are already there.
    TEMPLATE["hooks"]["on_resume"] = ("for f in /root/.env /etc/rig-template-token /home/user/runtime.txt; do "
                                      "test -s $f || exit 1; done; echo resumed >> /var/lib/rig-template/resumed")
# The template's autostart stream (streaming[0], its key the optional secret stream-key): the first
# launch gets the key and streams to a real RTMP receiver on this host (ffmpeg, through the rig's
# internet stand-in) from its restore on; the second gets none, so its launch log says the stream
# was not started and it runs on. RIG_TEMPLATE_STREAM=0 (or RIG_TEMPLATE_SECRETS=0) leaves it out.
STREAM = SECRETS and os.environ.get("RIG_TEMPLATE_STREAM", "1") != "0"
STREAM_KEY = "tmpl-Str3am_key.14"
# Seconds of the stream the receiver must get, and how long that may take in the rig's guest.
STREAM_RECEIVED_S, STREAM_LIMIT_S = 3, 300
if STREAM:
    from rig_media_flow import RIG_RTMP_URL, RTMP_PORT, Receiver  # noqa: E402
    TEMPLATE["secrets"].append({"name": "stream-key", "optional": True,
                                "description": "the RTMP stream's key (rig e2e)"})
    TEMPLATE["streaming"] = [{"name": "live", "url": RIG_RTMP_URL, "key": {"secret": "stream-key"},
                              "autostart": True}]
# A launch stopped and started again (a cold boot of its disk): on_shutdown ran before the stop,
# on_every_boot after the boot and not after the restore; RIG_TEMPLATE_COLD_START=0 leaves it out.
COLD_START = os.environ.get("RIG_TEMPLATE_COLD_START", "1") != "0"
if COLD_START:
    TEMPLATE["hooks"]["on_every_boot"] = ("test -s /root/.env; echo boot >> /var/lib/rig-template/every-boot; "
                                          "echo every boot hook ran")
    TEMPLATE["hooks"]["on_shutdown"] = "date +%s > /var/lib/rig-template/shutdown; sync; echo shutdown hook ran"
BUILD_LIMIT_S = 2400
LAUNCH_LIMIT_S = 600


def sse_events(api, path, limit_s):
    """The `data:` items of a Server-Sent Events stream, parsed, until the server closes it."""
    conn = UnixHTTP(api.sock, limit_s)
    conn.request("GET", path, headers={"Authorization": f"Bearer {api.key}", "Accept": "text/event-stream"})
    r = conn.getresponse()
    if r.status != 200:
        raise Failed(f"GET {path} answered {r.status}: {r.read()[:300]!r}")
    try:
        while True:
            line = r.readline()
            if not line:
                return
            line = line.decode(errors="replace").rstrip("\r\n")
            if line.startswith("data:"):
                yield json.loads(line[5:].strip())
    finally:
        conn.close()


def build(api):
    """Builds the template, printing its events; (build answer, events)."""
    base = f"/api/templates/default/{NAME}/{VERSION}"
    code, started = api.call("POST", f"{base}/build")
    expect(code in (200, 202), f"POST {base}/build answered {code}: {started}")
    step(f"build: {started.get('status')} ({started.get('digest')})")
    events = []
    for e in sse_events(api, f"{base}/build/events", BUILD_LIMIT_S):
        events.append(e)
        src = f"/{e['source']}" if e.get("source") else ""
        step(f"  [{e['phase']}{src} {e['level']}] {e['line'][:200]}")
    done = api.json("GET", f"{base}/build")
    return done, events


def cold_boot_ms(events):
    """The build VM's cold boot of the base image, from its event."""
    for e in events:
        if e["phase"] == "boot" and e["line"].startswith("the build VM runs after "):
            return int(e["line"].split()[5])
    return None


def token_of(name):
    """The rig-token secret each launch gets: its own, with characters a shell would mangle."""
    return f"tok-{name}-'q' $HOME `x`"


def launch(api, ws, name, stream=False):
    t0 = time.monotonic()
    body = {"project_id": ws, "name": name, "template_ref": REF}
    if SECRETS:
        body["secrets"] = {"rig-token": token_of(name)}
        if stream:
            body["secrets"]["stream-key"] = STREAM_KEY
    c = api.json("POST", "/api/computers", body)
    return c["id"], t0


def wait_running(api, cid, t0):
    """Milliseconds from `t0` (the create request) until `cid` runs."""
    def running():
        status = api.status_of(cid)
        if status == "error":
            c = api.json("GET", f"/api/computers/{cid}")
            raise Failed(f"{cid} went to error: {c.get('status_reason')}")
        return status == "running"
    poll(f"{cid} running", running, LAUNCH_LIMIT_S, 0.25)
    return (time.monotonic() - t0) * 1000


def check_secrets(api, cid, got):
    """The launch's secret, runtime files and on_resume hook, as the template asks."""
    name = got["name"]
    expect(token_of(name) not in json.dumps(got), f"{cid}: GET /computers/{cid} shows the secret")
    out = bash(api, cid, "sudo stat -c %a:%U /root/.env /etc/rig-template-token; "
                         "sudo sh -c 'set -a; . /root/.env; printf %s \"$RIG_TOKEN\"' | sha256sum; "
                         "sudo cat /etc/rig-template-token | sha256sum; cat ~/runtime.txt; "
                         "sudo cat /var/lib/rig-template/resumed")
    want_sum = hashlib.sha256(token_of(name).encode()).hexdigest()
    lines = out.splitlines()
    expect(lines[:2] == ["600:root", "600:root"], f"{cid}: /root/.env and the token file: {lines[:2]}")
    # The runtime file from secret:// holds the value, with or without a final newline.
    file_sums = (want_sum, hashlib.sha256(token_of(name).encode() + b"\n").hexdigest())
    expect(len(lines) >= 6 and lines[2].split()[0] == want_sum and lines[3].split()[0] in file_sums,
           f"{cid}: the secret in /root/.env and in its runtime file is not the one given: {lines[2:4]}")
    expect(lines[4:] == ["written at launch", "resumed"],
           f"{cid}: runtime file and on_resume (once) {lines[4:]}")


def check_computer(api, cid):
    """The template's work is in the computer; its (hostname, machine-id)."""
    got = api.json("GET", f"/api/computers/{cid}")
    instance = got["instance_id"]
    if SECRETS:
        check_secrets(api, cid, got)
    out = bash(api, cid, "sudo cat /opt/rig-template/hello.txt")
    expect(out == HELLO.strip(), f"{cid}: /opt/rig-template/hello.txt holds {out!r}")
    out = bash(api, cid, "stat -c %a:%U /opt/rig-template/hello.txt; cat ~/Desktop/from-template.txt; "
                         "stat -c %U ~/Desktop/from-template.txt")
    expect(out.split() == ["640:root", "on", "the", "desktop", "user"], f"{cid}: file modes/owners {out!r}")
    out = bash(api, cid, "cat /var/lib/rig-template/run.out; test -s /var/lib/rig-template/first-boot && echo hook-ok")
    expect(out.startswith("built-by-run\n6.") and out.endswith("hook-ok"),
           f"{cid}: run steps / on_first_boot output {out!r}")
    if PACKAGES:
        out = bash(api, cid, f"{package_mirror.APT_COMMAND}; dpkg-query -W -f '${{Version}}' {package_mirror.APT_PACKAGE}; echo; "
                             f"python3 -c 'import {package_mirror.PIP_MODULE} as m; print(m.GREETING)'; "
                             f"curl -s --max-time 30 http://127.0.0.1:{APP_PORT}/hello.txt | sha256sum; "
                             "systemctl is-active deskd-app-hello-http")
        want = [package_mirror.APT_SAYS, "1.0", package_mirror.PIP_SAYS,
                f"{hashlib.sha256(HELLO.encode()).hexdigest()}  -", "active"]
        expect(out.splitlines() == want, f"{cid}: the apt and pip packages and the app's service: {out.splitlines()}, want {want}")
        poll(f"{cid}: the app's autostart program ran once, in the X session as the desktop user",
             lambda: bash(api, cid, "cat ~/autostart.log 2>/dev/null || true").splitlines() == ["user :0"], 120, every_s=5)
    out = bash(api, cid, "echo \"$RIG_TEMPLATE_GREETING\"")
    expect(out == "hi there", f"{cid}: env RIG_TEMPLATE_GREETING is {out!r}")
    out = bash(api, cid, "hostname; cat /etc/machine-id")
    host, machine_id = (out.split() + ["", ""])[:2]
    expect(host == f"deskd-{instance}", f"{cid}: hostname {host!r}, expected deskd-{instance}")
    return host, machine_id


def check_health_watch(api, cid):
    """The app's health watch (restored with the golden snapshot) brings back its service after
    the service is stopped (systemd alone would not: a stop is not a failure)."""
    out = bash(api, cid, "sudo systemctl stop deskd-app-hello-http; systemctl is-active deskd-app-hello-http || true")
    expect(out == "inactive", f"{cid}: the app's service did not stop: {out!r}")
    t0 = time.monotonic()
    want = f"{hashlib.sha256(HELLO.encode()).hexdigest()}  -"
    poll(f"{cid}: the health watch restarts the stopped service",
         lambda: bash(api, cid, f"curl -s --max-time 5 http://127.0.0.1:{APP_PORT}/hello.txt | sha256sum") == want,
         240, every_s=3)
    # --merge: journald goes on writing under the golden snapshot's machine-id after the launch's
    # new identity, and a plain journalctl reads only the current machine-id's journal. The lines
    # the watch wrote may reach the journal after the service answers (a CI run on 2026-12-03 read
    # only the build's own lines, "check 1 of 3 failed ... healthy again", right after the service
    # came back), so the journal is synced and read until the restart's line is there.
    restarted = "restarting deskd-app-hello-http (on_fail: restart_service:http)"
    said = ""

    def watch_said_it():
        nonlocal said
        said = bash(api, cid, "sudo journalctl --sync; sudo journalctl --merge -u deskd-app-hello-health --no-pager -o cat | tail -n 20")
        return restarted in said

    try:
        poll(f"{cid}: the watch's journal says it restarted the service", watch_said_it, 90, every_s=5)
    except Failed:
        pass
    expect(restarted in said, f"{cid}: the watch's journal does not say it restarted the service: {said!r}")
    step(f"{cid}: the app's health watch restarted its stopped service; it answered again after "
         f"{time.monotonic() - t0:.0f} s")


def stream_lines(api, cid):
    """The launch log's lines of the autostart stream, oldest first."""
    log = api.json("GET", f"/api/computers/{cid}/launch-log")["events"]
    return [e for e in log if e["step"] == "streaming.live"]


def check_autostream(api, streaming, quiet, receiver):
    """`streaming` (given the key) streams from its launch on, into `receiver`; `quiet` (no key)
    has a launch-log line saying why not, and no stream."""
    lines = stream_lines(api, streaming)
    expect(any(e["level"] == "success" and "streaming (encoder pid" in e["line"] for e in lines),
           f"{streaming}: no autostart line in the launch log: {lines}")
    expect(not any(STREAM_KEY in e["line"] for e in lines), f"{streaming}: the stream key is in the launch log")
    t0 = time.monotonic()
    while receiver.media_s() < STREAM_RECEIVED_S:
        status = api.json("GET", f"/api/computers/{streaming}/stream/status")
        expect(status.get("status") == "streaming",
               f"{streaming}: the autostarted stream is {status} (receiver: {receiver.tail()})")
        expect(receiver.running(), f"the RTMP receiver ended: {receiver.tail()}")
        expect(time.monotonic() - t0 < STREAM_LIMIT_S,
               f"the receiver got {receiver.media_s():.1f} s of the stream in {STREAM_LIMIT_S} s")
        time.sleep(2)
    got = receiver.media_s()
    stopped = api.json("POST", f"/api/computers/{streaming}/stream/stop")
    expect(stopped.get("success") is not False, f"stream/stop answered {stopped}")
    probe = receiver.finish()
    kinds = sorted(st.get("codec_type") for st in probe.get("streams", []))
    expect("video" in kinds, f"what the receiver got has no video: {probe.get('streams')}")
    lines = stream_lines(api, quiet)
    expect(any("was not started" in e["line"] and "stream-key" in e["line"] for e in lines),
           f"{quiet}: its launch log does not say why the stream did not start: {lines}")
    status = api.json("GET", f"/api/computers/{quiet}/stream/status")
    expect(status.get("status") == "idle", f"{quiet} (no key) streams: {status}")
    step(f"autostart stream: {streaming} streamed from its launch ({got:.1f} s received by ffmpeg, "
         f"{'+'.join(kinds)}, {time.monotonic() - t0:.0f} s after running), stopped through the API; "
         f"{quiet} without the key: not started, said in its launch log ({lines[-1]['line'][:80]!r})")


def cold_start(api, cid):
    """Stop and start a launch: the hooks around a cold boot of its disk (issue 14)."""
    out = bash(api, cid, "sudo cat /var/lib/rig-template/every-boot 2>/dev/null; "
                         "sudo test -e /var/lib/rig-template/shutdown && echo shut || true")
    expect(out == "", f"{cid}: on_every_boot or on_shutdown ran before any cold boot or stop: {out!r}")
    t0 = time.monotonic()
    r = api.json("POST", f"/api/computers/{cid}/stop")
    expect(r.get("success") is True, f"stop answered {r}")
    poll(f"{cid} stopped", lambda: api.status_of(cid) in ("stopped", "error"), 300, every_s=2)
    expect(api.status_of(cid) == "stopped", f"after stop {cid} is {api.status_of(cid)}")
    stopped_s = time.monotonic() - t0
    t0 = time.monotonic()
    r = api.json("POST", f"/api/computers/{cid}/start")
    expect(r.get("success") is True, f"start answered {r}")
    ms = wait_running(api, cid, t0)
    out = bash(api, cid, "sudo cat /var/lib/rig-template/every-boot; sudo cat /var/lib/rig-template/resumed; "
                         "sudo test -s /var/lib/rig-template/shutdown && echo shut")
    expect(out.splitlines() == ["boot", "resumed", "shut"],
           f"{cid}: after stop and start, every-boot/resumed/shutdown markers are {out.splitlines()} "
           "(want on_every_boot once, on_resume still once, on_shutdown before the stop)")
    if PACKAGES:
        poll(f"{cid}: the app's autostart program ran again at the cold boot",
             lambda: bash(api, cid, "cat ~/autostart.log 2>/dev/null || true").splitlines() == ["user :0"] * 2,
             240, every_s=5)
    log = api.json("GET", f"/api/computers/{cid}/launch-log")["events"]
    steps = [e["step"] for e in log]
    for want in ("hooks.on_resume", "hooks.on_shutdown", "hooks.on_every_boot"):
        expect(want in steps, f"{cid}: no {want} in the launch log: {steps}")
    expect(not any(e["level"] == "error" for e in log), f"{cid}: errors in the launch log: "
           f"{[e for e in log if e['level'] == 'error']}")
    expect(not any(token_of(api.json('GET', f'/api/computers/{cid}')['name']) in e["line"] for e in log),
           f"{cid}: the secret is in the launch log")
    if STREAM:
        # Nothing listens now: the encoder starts (the agent answers) and ends on its own.
        started = [e for e in stream_lines(api, cid) if e["level"] == "success"]
        expect(len(started) >= 2, f"{cid}: the cold boot did not start the autostart stream again: {started}")
    step(f"stop ({stopped_s:.0f} s, on_shutdown ran first) and start: a cold boot of the launch's disk running after "
         f"{ms:.0f} ms, on_every_boot ran once with /root/.env there, on_resume did not run again")


SDK_TEMPLATE_LAUNCH = f"""
import os, sys
from orgo import Computer
try:
    # A project of its own: given the name of an existing one, the SDK swallows the create's
    # error and tries to make the project again (409), hiding the answer this step checks.
    Computer(project="sdk-templates", template="{NAME}", api_key=os.environ["DESKD_KEY"],
             base_api_url=os.environ["DESKD_BASE"], verbose=False)
except Exception as e:
    print(e)
    sys.exit(0)
sys.exit("created a computer of {NAME} without its required secret")
"""


def sdk_template_launch_is_refused_naming_the_secret():
    """The official SDK's Computer(project=..., template=NAME) reaches this template (its legacy
    builds/latest lookup is refused, so it sends the bare name as `image`, which deskd resolves)
    and, as the SDK cannot send secrets, the create is refused naming the required one."""
    sdk_python = os.environ.get("DESKD_SDK_PYTHON")
    if not sdk_python:
        step("the SDK's Computer(template=...): left out (no DESKD_SDK_PYTHON)")
        return
    import subprocess
    r = subprocess.run([sdk_python, "-c", SDK_TEMPLATE_LAUNCH], capture_output=True, text=True, timeout=300)
    said = (r.stdout + r.stderr).strip()
    expect(r.returncode == 0, f"the SDK's Computer(template={NAME!r}): {said[-400:]}")
    expect("rig-token" in said, f"the SDK's Computer(template={NAME!r}) was refused without naming the secret: {said[-400:]}")
    step(f"the SDK's Computer(project=..., template={NAME!r}) resolves the template and is refused: {said[-200:]}")


def flow(api, ctl):
    code, published = api.call("POST", "/api/templates", TEMPLATE)
    expect(code in (200, 201), f"POST /api/templates answered {code}: {published}")
    step(f"published {published['ref']} ({published['digest']})")

    t_build = time.monotonic()
    mirror = package_mirror.Mirror() if PACKAGES else None
    try:
        done, events = build(api)
    finally:
        if mirror is not None:
            mirror.stop()
    if done.get("status") == "failed" and "needs the network" in (done.get("error") or ""):
        step(f"SKIPPED: the build needed a network the rig's guest lacks: {done.get('error')}")
        return 77
    expect(done.get("status") == "ready", f"the build ended {done.get('status')}: {done.get('error')}")
    phases = [e["phase"] for e in events]
    for p in ("publish", "compile", "boot", "install", "snapshot", "ready"):
        expect(p in phases, f"no {p} event in the build's stream")
    lines = [e["line"] for e in events]
    expect("run as root" in lines, "build.run's output (its steps run as root) is not in the events")
    expect("first boot hook ran" in lines, "on_first_boot's output is not in the events")
    if PACKAGES:
        sources = {e.get("source") for e in events}
        expect({"apt", "pip"} <= sources, f"no apt or pip events in the build's stream: sources {sources}")
        asked = set(mirror.requests)
        for want in ("/apt/Release", f"/pypi/simple/{package_mirror.PIP_PACKAGE}/"):
            expect(want in asked, f"the build never asked the mirror for {want}: it asked {sorted(asked)}")
        expect(any("health" in (e.get("line") or "") for e in events) or
               any("apps[0].health" in (e.get("line") or "") for e in events),
               "the app's health check is not in the build's stream")
        step(f"the build installed {package_mirror.APT_PACKAGE} (apt) and {package_mirror.PIP_PACKAGE} (pip) from the "
             f"local mirrors ({len(mirror.requests)} requests) and waited for the app's health check")
    build_ms = done.get("build_time_ms")
    step(f"build ready: build_time_ms {build_ms} (client saw {time.monotonic() - t_build:.0f} s)")
    again = api.json("POST", f"/api/templates/default/{NAME}/{VERSION}/build")
    expect(again.get("status") == "ready" and again.get("reused") is True, f"a second build answered {again}")

    # The API flow's power steps run here on a computer of their own. On 2026-12-02 a launch from
    # the golden snapshot, rebooted, hung in its initramfs for 15 minutes (not understood yet; see
    # issue 14's note), so they do not use a launch. It boots after the build, not beside it: booted
    # beside the build VM, its guest triple-faulted four times in one boot (two L2 guests at once
    # make the emulator's faults far likelier; tests/rig/README.md), and the fifth reboot, the
    # test's own, made the daemon call it a reboot loop.
    power_ws = api.json("POST", "/api/projects", {"name": "power"})["id"]
    power = api.json("POST", "/api/computers", {"project_id": power_ws, "name": "power-1"})["id"]
    step(f"created {power} for the power steps")
    poll(f"{power} running", lambda: api.status_of(power) in ("running", "error"), 900, every_s=2)
    expect(api.status_of(power) == "running", f"{power} is {api.status_of(power)}")
    power_steps(api, power, ctl)
    api.json("DELETE", f"/api/projects/{power_ws}")

    listed = api.json("GET", "/api/computers")["computers"]
    expect(not any(c.get("name", "").startswith(f"build-{NAME}-") for c in listed), "a build computer shows in GET /computers")

    ws = api.json("POST", "/api/projects", {"name": "templates"})["id"]
    if SECRETS:
        code, refused = api.call("POST", "/api/computers", {"project_id": ws, "name": "no-secret", "template_ref": REF})
        expect(code == 400 and "rig-token" in json.dumps(refused), f"a launch without its required secret: {code} {refused}")
        sdk_template_launch_is_refused_naming_the_secret()
    receiver = folder = None
    if STREAM:
        import tempfile
        folder = tempfile.mkdtemp(prefix="deskd-tmpl-rtmp.")
        receiver = Receiver(RTMP_PORT, STREAM_KEY, folder)
    try:
        a, ta = launch(api, ws, "from-template-1", stream=STREAM)
        b, tb = launch(api, ws, "from-template-2")
        step(f"launched {a} and {b} from {REF}")
        ms_a = wait_running(api, a, ta)
        ms_b = wait_running(api, b, tb)
        step(f"running: {a} after {ms_a:.0f} ms, {b} after {ms_b:.0f} ms (create -> running)")
        if STREAM:
            check_autostream(api, a, b, receiver)
    finally:
        if receiver is not None:
            receiver.kill()
        if folder is not None:
            import shutil
            shutil.rmtree(folder, ignore_errors=True)
    ids = [check_computer(api, c) for c in (a, b)]
    step(f"both have the template's files, run output, hook and env; identities {ids}")
    if PACKAGES:
        check_health_watch(api, b)
    expect(ids[0][0] != ids[1][0], "the two launches share a hostname")
    expect(ids[0][1] != ids[1][1] and all(len(m) == 32 for _, m in ids), f"machine-ids not distinct: {ids}")
    if FILES:
        # Both launches run in one workspace: the file checks need no boot of their own.
        import rig_files_flow
        t0 = time.monotonic()
        rig_files_flow.check_files(api, ws, a, b)
        step(f"file checks on {a} (the workspace upload also into {b}) done in {time.monotonic() - t0:.0f} s")

    if COLD_START:
        cold_start(api, a)

    # The rig's host has 7 GB: a third 4 GB computer is over the RAM commitment quota, so the two
    # launches go before the run.
    for c in (a, b):
        r = api.json("DELETE", f"/api/computers/{c}")
        expect(r.get("success") is True, f"deleting {c} answered {r}")

    t_run = time.monotonic()
    run_body = {"ref": REF, "secrets": {"rig-token": token_of("run")}} if SECRETS else {"ref": REF}
    run = api.json("POST", "/api/templates/run", run_body)
    ms_run = wait_running(api, run["id"], t_run)
    step(f"POST /templates/run: {run['id']} running after {ms_run:.0f} ms")
    gone = api.json("DELETE", f"/api/templates/run?id={run['id']}")
    expect(gone.get("deleted") is True, f"DELETE /templates/run answered {gone}")

    cold = cold_boot_ms(events)
    step(f"FIGURES (same run): build {build_ms} ms; launch from the golden snapshot {ms_a:.0f} ms and "
         f"{ms_b:.0f} ms, /templates/run {ms_run:.0f} ms; cold boot of the base image (the build VM) {cold} ms")
    api.json("DELETE", f"/api/projects/{ws}")
    return 0


def main():
    return run_flow(__doc__, lambda api, read: flow(api, read("ctl")), passed="all template steps passed")


if __name__ == "__main__":
    sys.exit(main())
