#!/usr/bin/env python3
"""The API's own path, as the README shows it with curl, driving a real computer (a VM) through deskd.

Run by tests/sdk-rig-e2e against `deskd serve` inside the rig (tests/rig/serve), before the SDK half
(orgo_sdk_vm.py): plain HTTP over the daemon's Unix socket with the API key. Reads the folder
`tests/rig/serve --info-dir` wrote (socket, key, ctl). One computer:

  create a workspace and a computer; screenshot (the call waits while it boots), 1280x720 PNG, also
  as response_format=url; bash (uname, the hostname the daemon gave it); the agent through
  /desktops/{instance}/proxy/health; the console log; the daemon SIGKILLed and started again
  re-attaches to the running VM (same boot);
  suspend -> suspended, start resumes it (same boot, a background process alive, a counting loop
  went on, the clock set), a live clone runs with its own hostname, machine-id and RNG, then turns
  hostile beside its source (rig_hostile_flow.py; RIG_HOSTILE_FLOW=0 leaves it out); delete ->
  404. The reboot, stop and start, and the VMM killed during a boot are `power_steps`, which
  rig_template_flow.py runs on a computer launched from a template, in a rig of its own. With guest networking (rig_network_flow.py; RIG_NETWORK_FLOW=0 leaves it
  out): the first boot's network checks, the resumed and the cloned computer fetch a page, and no
  namespace or TAP is left after the VMM is killed and after delete. The audio stream
  (rig_media_flow.check_audio; RIG_MEDIA_FLOW=0 leaves it out): a 440 Hz tone played in the guest
  is captured from /ws/audio, its events arrive, silence when nothing plays. RTMP streaming
  (rig_media_flow.check_rig_rtmp; RIG_RTMP_FLOW=0 or RIG_MEDIA_FLOW=0 leaves it out): the official SDK's start_stream
  pushes the screen and sound to an ffmpeg receiver on this host through the rig's rtmp.test, at
  least 5 s of 1280x720 H.264 and AAC arrive; stream_status, stop_stream, a dead port's
  `terminated`; the stream key in no answer or log. The live view
  (tests/viewer/viewer.py; RIG_VIEWER_FLOW=0 leaves it out): orgo-vnc and noVNC in headless Chromium
  behind nginx (the README's snippet) connect with the API's hostname and password, show the
  desktop, a click and typed text reach the guest, a wrong password is refused. The clipboard and
  the models' actions (rig_actions_flow.py; RIG_ACTIONS_FLOW=0 leaves them out): paste and copy,
  triple_click, hold_key, a drag by mouse_down/move/mouse_up, region and scaled screenshots.

Faults are injected through the supervisor inside (tests/rig/supervise: files in `ctl`); the one
reboot the test asks for is announced there, so that any other guest reset is recorded as a fault of
the emulator. Prints each step with its time; exits 1 on the first mismatch.

Last, before the delete: resize (rig_resize_flow.check_resize; RIG_RESIZE_FLOW=0 leaves it out):
the disk grown live, resizes refused while suspended, a shape stored while stopped and booted at
the next start (this rig's one extra cold boot).
"""

import argparse
import base64
import http.client
import json
import os
import re
import socket
import subprocess
import struct
import sys
import time
import urllib.parse

START = time.monotonic()
WIDTH, HEIGHT = 1280, 720
# Guest networking's steps (rig_network_flow.py); RIG_NETWORK_FLOW=0 leaves them out.
NETWORK = os.environ.get("RIG_NETWORK_FLOW", "1") != "0"
# The audio stream's steps (rig_media_flow.check_audio) and RTMP streaming's
# (rig_media_flow.check_rig_rtmp); RIG_MEDIA_FLOW=0 leaves both out, RIG_RTMP_FLOW=0 the RTMP steps.
MEDIA = os.environ.get("RIG_MEDIA_FLOW", "1") != "0"
RTMP = MEDIA and os.environ.get("RIG_RTMP_FLOW", "1") != "0"
# The live view's steps (tests/viewer/viewer.py: orgo-vnc and noVNC in Chromium behind nginx on this
# port, the daemon's public_url; tests/sdk-rig-e2e sets it). Unset or RIG_VIEWER_FLOW=0: left out.
VIEWER_PROXY_PORT = int(os.environ.get("RIG_VIEWER_PROXY_PORT") or 0) if os.environ.get("RIG_VIEWER_FLOW", "1") != "0" else 0
# The clipboard and the models' actions (rig_actions_flow.py); RIG_ACTIONS_FLOW=0 leaves them out.
ACTIONS = os.environ.get("RIG_ACTIONS_FLOW", "1") != "0"
# The flow's helpers import this file by name: as a script it is that module too (one `Failed`).
sys.modules.setdefault("rig_api_flow", sys.modules[__name__])


def step(text):
    print(f"api-flow: [{time.monotonic() - START:6.1f} s] {text}", flush=True)


class Failed(Exception):
    pass


def expect(ok, what):
    if not ok:
        raise Failed(what)


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class Api:
    """curl --unix-socket SOCKET -H 'Authorization: Bearer KEY' http://localhost/api/..., in Python."""

    def __init__(self, sock, key):
        self.sock, self.key = sock, key

    def call(self, method, path, body=None, timeout=900):
        """(HTTP status, parsed JSON body or raw bytes)."""
        conn = UnixHTTP(self.sock, timeout)
        headers = {"Authorization": f"Bearer {self.key}"}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            raw = r.read()
        finally:
            conn.close()
        if "json" in (r.getheader("Content-Type") or ""):
            return r.status, json.loads(raw)
        return r.status, raw

    def json(self, method, path, body=None, timeout=900):
        """The JSON answer of a call that must succeed."""
        status, data = self.call(method, path, body, timeout)
        expect(200 <= status < 300 and isinstance(data, (dict, list)),
               f"{method} {path} answered {status}: {str(data)[:300]}")
        return data

    def status_of(self, cid):
        """The computer's status, or 'unreachable' while the API does not answer (a daemon restart)."""
        try:
            code, data = self.call("GET", f"/api/computers/{cid}", timeout=30)
        except (OSError, http.client.HTTPException):
            return "unreachable"
        return data.get("status", f"HTTP {code}") if isinstance(data, dict) else f"HTTP {code}"


def png_size(data):
    """(width, height) of a PNG, or None if `data` is not one."""
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def poll(what, check, limit_s, every_s=1.0):
    deadline = time.monotonic() + limit_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    raise Failed(f"{what} (not within {limit_s} s; last: {last!r})")


def flow(api, ctl):
    ws = api.json("POST", "/api/projects", {"name": "demo"})["id"]
    created = api.json("POST", "/api/computers", {"project_id": ws, "name": "demo-1"})
    cid = created["id"]
    step(f"created {cid} (status {created['status']})")

    t0 = time.monotonic()
    shot = api.json("GET", f"/api/computers/{cid}/screenshot")
    expect(shot.get("mime_type") == "image/png", f"screenshot mime_type {shot.get('mime_type')!r}")
    expect((shot.get("width"), shot.get("height")) == (WIDTH, HEIGHT), f"screenshot size {shot.get('width')}x{shot.get('height')}")
    png = base64.b64decode(shot["image"])
    expect(png_size(png) == (WIDTH, HEIGHT), f"the screenshot is not a {WIDTH}x{HEIGHT} PNG ({png[:16]!r})")
    step(f"screenshot after {time.monotonic() - t0:.0f} s (waited for the boot): {WIDTH}x{HEIGHT} PNG, {len(png)} bytes")

    instance = api.json("GET", f"/api/computers/{cid}")["instance_id"]
    out = api.json("POST", f"/api/computers/{cid}/bash", {"command": "uname -sr; hostname"})
    step(f"bash: {out}")
    expect(out.get("exit_code") == 0, "bash exit code")
    expect(out["output"].startswith("Linux 6."), "bash output: not Linux 6.x")
    # The VMM hides hardware virtualization from guests (src/vmm/arch/x86_64/cpuid.rs).
    nested = bash(api, cid, "grep -cwE 'svm|vmx' /proc/cpuinfo || true")
    expect(nested == "0", f"the guest sees hardware virtualization ({nested} CPUs with svm/vmx)")
    expect(f"deskd-{instance}" in out["output"], "the hostname is not the one from deskd.hostname")

    url = api.json("GET", f"/api/computers/{cid}/screenshot?response_format=url")["image"]
    code, stored = api.call("GET", url)
    expect(code == 200 and isinstance(stored, bytes) and png_size(stored) == (WIDTH, HEIGHT),
           f"the stored screenshot at {url}: HTTP {code}")
    step(f"response_format=url served at {url}")

    proxied = api.json("GET", f"/api/desktops/{instance}/proxy/health")
    step(f"proxy/health: {proxied}")
    expect(proxied.get("status") == "ok", "proxy/health")

    code, console = api.call("GET", f"/api/computers/{cid}/console?format=text")
    text = console.decode(errors="replace") if isinstance(console, bytes) else json.dumps(console)
    expect(code == 200 and "Linux version" in text, "the console log lacks the guest kernel's boot messages")
    step("console log has the guest kernel's boot messages")

    if NETWORK:
        import rig_network_flow
        rig_network_flow.check_network(api, cid, ctl)
    if MEDIA:
        import rig_media_flow
        rig_media_flow.check_audio(api, cid)
    if RTMP:
        import rig_media_flow
        rig_media_flow.check_rig_rtmp(api, cid)

    # The operator's command line on the same computer: `deskd screenshot` and `deskd bash`.
    rig_check = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cli", "rig-check")
    done = subprocess.run([rig_check, api.sock, api.key, cid], capture_output=True, text=True, timeout=900)
    sys.stderr.write(done.stdout + done.stderr)
    expect(done.returncode == 0, f"tests/cli/rig-check exited {done.returncode}")
    step("deskd screenshot and deskd bash work on the running computer")

    if VIEWER_PROXY_PORT:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "viewer"))
        import viewer
        # The daemon's TCP listener, which tests/rig/serve forwards to this host.
        target = urllib.parse.urlparse(os.environ["DESKD_BASE"]).netloc
        proxy = viewer.Proxy(target, VIEWER_PROXY_PORT)
        try:
            viewer.check_viewers(api, cid, proxy)
        finally:
            proxy.close()
    if ACTIONS:
        import rig_actions_flow
        rig_actions_flow.check_actions(api, cid)

    def boot_id():
        r = api.json("POST", f"/api/computers/{cid}/bash", {"command": "cat /proc/sys/kernel/random/boot_id"})
        return r["output"].strip()

    suspend_resume_and_clone(api, cid, boot_id(), ctl)

    # A daemon killed with SIGKILL and started again (the supervisor restarts it as systemd does)
    # re-attaches to the VM that kept running: same guest boot, one computer, still driven.
    before = boot_id()
    open(os.path.join(ctl, "kill-daemon"), "w").close()
    time.sleep(3)
    poll("the daemon answers again after its restart", lambda: api.status_of(cid) != "unreachable", 120)
    status = api.status_of(cid)
    expect(status == "running", f"after a daemon restart the computer is {status!r}, not running")
    after = boot_id()
    expect(before and before == after, f"the guest rebooted across the daemon restart ({before} -> {after})")
    count = len(api.json("GET", f"/api/computers?workspace_id={ws}")["computers"])
    step(f"daemon killed and restarted; it re-attached to the running VM (same boot {after}, {count} computer(s))")
    expect(count == 1, f"the project lists {count} computers after the restart, not 1")

    # Resize (issue 17) on this computer, which still has the default shape the checks expect:
    # its stop and start is the one cold boot they add. A stored shape of 1 vCPU: a 2-vCPU desktop
    # triple-faults in the rig about half the time (rig_resize_flow.py says more).
    if os.environ.get("RIG_RESIZE_FLOW", "1") != "0":
        import rig_resize_flow
        vcpus, mem_gb = rig_resize_flow.stored_shape(1)
        rig_resize_flow.check_resize(api, cid, stored_vcpus=vcpus, stored_mem_gb=mem_gb)

    # The reboot, stop and start, and the VMM killed during a boot run in the template rig
    # (rig_template_flow.py calls power_steps on a computer launched from a template), on a fresh
    # L1: three times in a row (sessions 6 and 7) this rig's L1 kernel died at about 26 minutes of
    # uptime at the first cold boot after the suspend and clone steps. Each rig now lives about
    # half as long.
    r = api.json("DELETE", f"/api/computers/{cid}")
    expect(r.get("success") is True, f"delete answered {r}")
    code, _ = api.call("GET", f"/api/computers/{cid}")
    expect(code == 404, f"delete left the computer (GET answers {code})")
    step("deleted")
    if NETWORK:
        import rig_network_flow
        rig_network_flow.check_no_network_left(ctl, cid, "after delete")


def power_steps(api, cid, ctl):
    """A running computer rebooted from inside (a new boot), stopped (no VM, no saved VM), started
    with its VMM killed during the boot (error with a reason, the daemon carries on), deleted."""
    def boot_id():
        r = api.json("POST", f"/api/computers/{cid}/bash", {"command": "cat /proc/sys/kernel/random/boot_id"})
        return r["output"].strip()

    after = boot_id()
    # A reboot from inside the guest boots the computer again: a new boot of the same computer.
    # Announced to the supervisor, so that this reset is not taken for a fault of the emulator.
    open(os.path.join(ctl, f"expect-reboot-{cid}"), "w").close()
    api.json("POST", f"/api/computers/{cid}/bash",
             {"command": 'setsid sh -c "sleep 2; sudo systemctl reboot" >/dev/null 2>&1 < /dev/null &'})
    t0, seen = time.monotonic(), []

    def rebooted():
        s = api.status_of(cid)
        if s != "running" and (not seen or seen[-1] != s):
            seen.append(s)
        return s == "error" or (s == "running" and seen)

    # A second boot in the rig has been seen to take over 600 s (the emulator's speed varies a lot).
    poll("the computer goes through a reboot and runs again", rebooted, 900, every_s=2)
    status = api.status_of(cid)
    expect(status == "running", f"after a reboot inside the guest the computer is {status!r} (seen: {seen})")
    new_boot = boot_id()
    expect(new_boot != after, "the boot id did not change across the guest's reboot")
    step(f"a reboot inside the guest booted it again in {time.monotonic() - t0:.0f} s (went through: {' '.join(seen)})")

    # Stop and start: the power button ends the VM (`stopped`, no VM left), start boots it again.
    r = api.json("POST", f"/api/computers/{cid}/stop")
    expect(r.get("success") is True, f"stop answered {r}")
    t0 = time.monotonic()
    poll("the computer is stopped", lambda: api.status_of(cid) in ("stopped", "error"), 180)
    status = api.status_of(cid)
    expect(status == "stopped", f"after stop the computer is {status!r}")
    step(f"stop: stopped after {time.monotonic() - t0:.0f} s")
    code, stopped = api.call("GET", f"/api/computers/{cid}")
    expect(stopped["instance_details"].get("saved_vm_bytes") is None, "a stopped computer kept its saved VM")

    # Start, and the VMM dies while the guest boots: its computer turns to error with the reason,
    # and the daemon carries on. (That a start after a stop is a new boot is checked by the SDK
    # test's restart(), on the clone: one cold boot fewer here.)
    r = api.json("POST", f"/api/computers/{cid}/start")
    expect(r.get("success") is True, f"start answered {r}")
    t0 = time.monotonic()

    def killed():
        # The request is repeated until the VMM exists (it writes its pid file before its guest
        # runs) and its death has been seen.
        req = os.path.join(ctl, f"kill-vmm-{cid}")
        if not os.path.exists(req):
            open(req, "w").close()
        return api.status_of(cid) == "error"

    poll("a VMM killed during the boot turns its computer to error", killed, 180, every_s=3)
    reason = api.json("GET", f"/api/computers/{cid}").get("status_reason")
    step(f"start, then the VMM killed {time.monotonic() - t0:.0f} s into the boot: computer is error ({reason})")
    expect(reason, "the error carries no status_reason")
    code, _ = api.call("GET", "/api/projects")
    expect(code == 200, f"the daemon stopped answering after a VMM died (HTTP {code})")
    if NETWORK:
        import rig_network_flow
        rig_network_flow.check_no_network_left(ctl, cid, "after its VMM was killed")

    r = api.json("DELETE", f"/api/computers/{cid}")
    expect(r.get("success") is True, f"delete answered {r}")
    code, _ = api.call("GET", f"/api/computers/{cid}")
    expect(code == 404, f"delete left the computer (GET answers {code})")
    step("deleted")
    if NETWORK:
        import rig_network_flow
        rig_network_flow.check_no_network_left(ctl, cid, "after delete")


def bash(api, cid, command):
    r = api.json("POST", f"/api/computers/{cid}/bash", {"command": command})
    expect(r.get("exit_code") == 0, f"bash {command!r} exited {r.get('exit_code')}: {r.get('output', '')[:300]}")
    return r["output"].strip()


def window_geometry(api, cid, title):
    """(x, y, w, h) of the window titled `title`, from xwininfo in the guest, or None while it is absent."""
    out = bash(api, cid, f"xwininfo -name {title} 2>/dev/null | grep -E 'Absolute upper-left|Width|Height' || true")
    nums = [int(n) for n in re.findall(r":\s+(-?\d+)", out)]
    return tuple(nums) if len(nums) == 4 else None


def daemon_date(api, method, path, body=None):
    """(the answer's JSON, its Date header as seconds since the epoch: the daemon's clock, 1 s steps)."""
    import email.utils
    conn = UnixHTTP(api.sock, 120)
    headers = {"Authorization": f"Bearer {api.key}"}
    data = None
    if body is not None:
        data = json.dumps(body)
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    r = conn.getresponse()
    out = json.loads(r.read())
    date = email.utils.parsedate_to_datetime(r.getheader("Date")).timestamp()
    conn.close()
    return out, date


def guest_clock_offset(api, cid):
    """How far the guest's wall clock is outside the daemon's, seconds (0 when inside): the guest's
    `date` is read between two answers whose Date headers bound it (each whole seconds)."""
    _, before = daemon_date(api, "GET", f"/api/computers/{cid}")
    out, after = daemon_date(api, "POST", f"/api/computers/{cid}/bash", {"command": "date +%s.%N"})
    guest = float(out["output"].strip())
    if guest < before:
        return guest - before
    if guest > after + 1:
        return guest - (after + 1)
    return 0.0


def suspend_resume_and_clone(api, cid, boot, ctl):
    """Issue 11: a suspended desktop resumes with its processes; a running computer clones live."""
    # A background process with a known pid and a loop that appends to a file every second.
    pid = bash(api, cid, "setsid sleep 100000 >/dev/null 2>&1 < /dev/null & echo $!")
    bash(api, cid, "rm -f /tmp/loop; setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i >> /tmp/loop; sleep 1; done' "
                   ">/dev/null 2>&1 < /dev/null &")
    time.sleep(3)
    before_lines = int(bash(api, cid, "wc -l < /tmp/loop"))
    t0 = time.monotonic()
    r = api.json("POST", f"/api/computers/{cid}/suspend", timeout=900)
    expect(r.get("status") == "suspended", f"suspend answered {r}")
    took = time.monotonic() - t0
    c = api.json("GET", f"/api/computers/{cid}")
    saved = c["instance_details"].get("saved_vm_bytes")
    expect(c["status"] == "suspended" and saved, f"after suspend: status {c['status']}, saved_vm_bytes {saved}")
    step(f"suspended in {took:.1f} s (saved VM on disk: {saved / 2**20:.0f} MiB)")
    time.sleep(10)
    t0 = time.monotonic()
    r = api.json("POST", f"/api/computers/{cid}/start")
    expect(r.get("success") is True, f"start of the suspended computer answered {r}")
    poll("the suspended computer runs again", lambda: api.status_of(cid) in ("running", "error"), 300, every_s=0.5)
    expect(api.status_of(cid) == "running", f"after resume the computer is {api.status_of(cid)}")
    resumed_in = time.monotonic() - t0
    expect(bash(api, cid, "cat /proc/sys/kernel/random/boot_id") == boot, "resume booted the guest anew")
    expect(bash(api, cid, f"kill -0 {pid} && echo alive") == "alive", f"process {pid} did not survive the suspend")
    time.sleep(2)
    lines = [int(x) for x in bash(api, cid, "cat /tmp/loop").split()]
    expect(lines == list(range(1, len(lines) + 1)), "the loop's file is not one unbroken count")
    expect(len(lines) > before_lines, "the loop did not go on after the resume")
    offset = guest_clock_offset(api, cid)
    expect(abs(offset) <= 2, f"the resumed guest's clock is {offset:+.1f} s outside the daemon's")
    shot = api.json("GET", f"/api/computers/{cid}/screenshot")
    expect((shot.get("width"), shot.get("height")) == (WIDTH, HEIGHT), "screenshot after resume")
    step(f"resumed in {resumed_in:.1f} s: same boot, pid {pid} alive, loop went on ({before_lines} -> {len(lines)} lines), "
         f"clock {offset:+.1f} s off the daemon's")
    if NETWORK:
        import rig_network_flow
        rig_network_flow.fetch_page(api, cid, "resumed")

    # The daemon SIGKILLed while it suspends: after its restart the computer is running or
    # suspended, never lost, and runs on with its processes.
    import threading
    def suspend_call():
        try:
            api.call("POST", f"/api/computers/{cid}/suspend", timeout=900)
        except (OSError, http.client.HTTPException):
            pass  # the daemon died under it, as intended
    threading.Thread(target=suspend_call, daemon=True).start()
    time.sleep(1.5)
    open(os.path.join(ctl, "kill-daemon"), "w").close()
    time.sleep(3)
    poll("the daemon answers again after its restart", lambda: api.status_of(cid) != "unreachable", 120)
    after_kill = api.status_of(cid)
    expect(after_kill in ("running", "suspended"), f"a daemon killed during a suspend left the computer {after_kill!r}")
    if after_kill == "suspended":
        api.json("POST", f"/api/computers/{cid}/start")
    poll("the computer runs after the interrupted suspend",
         lambda: api.status_of(cid) in ("running", "error"), 300, every_s=0.5)
    expect(api.status_of(cid) == "running", f"after the interrupted suspend the computer is {api.status_of(cid)}")
    expect(bash(api, cid, f"kill -0 {pid} && echo alive") == "alive", "the interrupted suspend lost the process")
    expect(bash(api, cid, "cat /proc/sys/kernel/random/boot_id") == boot, "the interrupted suspend rebooted the guest")
    step(f"daemon SIGKILLed during a suspend: the computer was {after_kill} after the restart and runs on (same boot)")

    # Auto-stop: unused for a minute (reading its record is not use), it is suspended; the first
    # action resumes it and is answered.
    api.json("PATCH", f"/api/computers/{cid}/auto-stop", {"auto_stop_minutes": 1})
    t0 = time.monotonic()
    poll("auto-stop suspends the unused computer", lambda: api.status_of(cid) == "suspended", 240, every_s=2)
    idle = time.monotonic() - t0
    api.json("PATCH", f"/api/computers/{cid}/auto-stop", {"auto_stop_minutes": 0})
    t0 = time.monotonic()
    expect(bash(api, cid, f"kill -0 {pid} && echo alive") == "alive", "after auto-stop the process is gone")
    step(f"auto-stop suspended it after {idle:.0f} s unused; a bash call resumed it and was answered in "
         f"{time.monotonic() - t0:.1f} s")

    # A running computer cloned live: both run, the clone has its own identity.
    src_ids = bash(api, cid, "hostname; cat /etc/machine-id; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'").split()
    t0 = time.monotonic()
    clone = api.json("POST", f"/api/computers/{cid}/clone", timeout=900)
    clone_id = clone["id"]
    step(f"clone answered in {time.monotonic() - t0:.1f} s: {clone_id} ({clone.get('status')})")
    poll("the clone runs", lambda: api.status_of(clone_id) in ("running", "error"), 300, every_s=0.5)
    expect(api.status_of(clone_id) == "running", f"the clone is {api.status_of(clone_id)}")
    clone_ids = bash(api, clone_id, "hostname; cat /etc/machine-id; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'").split()
    expect(bash(api, cid, "echo source") == "source", "the source stopped answering after the clone")
    for what, a, b in zip(("hostname", "machine-id", "urandom"), src_ids, clone_ids):
        expect(a != b, f"the clone has its source's {what} ({a})")
    clone_c = api.json("GET", f"/api/computers/{clone_id}")
    expect(clone_ids[0] == f"deskd-{clone_c['instance_id']}", f"the clone's hostname {clone_ids[0]} is not its own")
    expect(clone_c["vnc_password"] != api.json("GET", f"/api/computers/{cid}")["vnc_password"], "same vnc_password")
    expect(bash(api, clone_id, f"kill -0 {pid} && echo alive") == "alive", "the clone lost the source's processes")
    if NETWORK:
        import rig_network_flow
        rig_network_flow.fetch_page(api, clone_id, "live clone")
        rig_network_flow.fetch_page(api, cid, "the clone's source")
        rig_network_flow.check_neighbours_unreachable(api, cid, ctl, "the clone's source")
    step(f"clone runs {time.monotonic() - t0:.1f} s after the request: hostname {clone_ids[0]} (source {src_ids[0]}), "
         "own machine-id and RNG output, the source's processes")
    # The clone turns hostile (its agent replaced by one that never accepts, trickles, answers
    # 100 MB) while the source is its neighbour (rig_hostile_flow.py); RIG_HOSTILE_FLOW=0: left out.
    import rig_hostile_flow
    rig_hostile_flow.check_hostile_guest(api, clone_id, cid, ctl)
    # The official SDK drives the clone (its restart is that test's one cold boot), then
    # destroys it.
    sdk_python = os.environ.get("DESKD_SDK_PYTHON")
    if sdk_python:
        # The source is suspended while the SDK test runs. Twice (2026-12-01, sessions 6 and 7) the
        # rig's L1 kernel died at the clone's restart() cold boot with the source running: "stack
        # guard page was hit" in a vcpu thread of L1's KVM, with the source guest reset at the same
        # moment. That is a fault of the emulated SVM under two L2 guests. A cold boot beside a
        # running guest is therefore not covered in the rig; on hardware it is the normal case.
        r = api.json("POST", f"/api/computers/{cid}/suspend", timeout=900)
        expect(r.get("status") == "suspended", f"suspending the source answered {r}")
        step("the clone's source suspended for the SDK test (one guest in the rig during its cold boot)")
        # DESKD_BASE and DESKD_KEY come from tests/sdk-rig-e2e along with DESKD_SDK_PYTHON.
        env = dict(os.environ, DESKD_COMPUTER_ID=clone_id)
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "orgo_sdk_vm.py")
        rc = subprocess.run([sdk_python, script], env=env).returncode
        expect(rc == 0, f"the SDK test on the clone failed (exit {rc})")
        code, _ = api.call("GET", f"/api/computers/{clone_id}")
        expect(code == 404, f"the SDK's destroy() left the clone (GET answers {code})")
        r = api.json("POST", f"/api/computers/{cid}/start")
        expect(r.get("success") is True, f"resuming the source answered {r}")
        poll("the source runs again", lambda: api.status_of(cid) in ("running", "error"), 300, every_s=0.5)
        expect(api.status_of(cid) == "running", f"after resume the source is {api.status_of(cid)}")
        expect(bash(api, cid, "cat /proc/sys/kernel/random/boot_id") == boot, "resuming the source booted it anew")
        step("the source resumed after the SDK test (same boot)")
    else:
        r = api.json("DELETE", f"/api/computers/{clone_id}")
        expect(r.get("success") is True, f"deleting the clone answered {r}")


def run_flow(doc, flow, passed="all steps passed"):
    """The flows' shared entry: `--info-dir DIR` (what tests/rig/serve --info-dir wrote) gives the
    socket, key and ctl folder; `flow(api, read)` runs with `read(name)` for the folder's files and
    returns an exit status (None for 0). A `Failed` is printed and exits 1."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--info-dir", required=True, help="the folder tests/rig/serve --info-dir wrote")
    a = p.parse_args()

    def read(name):
        with open(os.path.join(a.info_dir, name)) as f:
            return f.read().strip()

    api = Api(read("socket"), read("key"))
    try:
        rc = flow(api, read) or 0
    except Failed as e:
        step(f"FAILED: {e}")
        return 1
    if rc == 0:
        step(passed)
    return rc


def main():
    return run_flow(__doc__, lambda api, read: flow(api, read("ctl")))


if __name__ == "__main__":
    sys.exit(main())
