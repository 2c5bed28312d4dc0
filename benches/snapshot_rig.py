#!/usr/bin/env python3
"""Suspend and resume of a 4 GiB desktop: deskd's saved VM next to QEMU's migrate-to-file (issue 11).

Run inside the rig by benches/snapshot-rig, next to a `deskd serve` (tests/rig/supervise) whose
data disk offers the desktop image as the default template. One guest at a time (two L2 guests at
once make the emulator's faults likelier, tests/rig/README.md), same image, same run:

deskd: POST /computers (ram 4, cpu 1); wait for `running` and a screenshot; settle; then
  - suspend: POST /computers/ID/suspend, from the request to its answer (`suspended`: the VM
    paused, its memory and device state written and synced into computers/ID/saved/, its VMM gone);
  - size on disk: computers/ID/saved/ (state + sparse memory file), apparent and allocated;
  - resume: POST /computers/ID/start until the first GET /computers/ID/screenshot answered with a
    PNG (through the daemon, which forwards to the agent over vsock), and until `running`;
  - host memory 60 s after that first screenshot: the resumed VMM's RSS from /proc/PID/smaps, split
    into its guest-RAM mappings (deskd maps the saved memory file MAP_PRIVATE: file pages read in,
    plus "anonymous" pages the guest wrote since) and the rest (the VMM's own memory).
QEMU: qemu-system-x86_64 -M microvm,acpi=on -enable-kvm -cpu host -m 4096 -smp 1 with the image's
  kernel, initrd and the cmdline deskd gives it, its rootfs under a qcow2 overlay (-b rootfs -F raw,
  on the same data disk), virtio-rng and vhost-vsock (the agent is reached over the L1's AF_VSOCK,
  as tests/image/boot-in-vm-host.sh does): wait for the agent's /health "ready":true and a
  /screenshot; settle; then
  - suspend: QMP `stop`, `migrate file:FILE` (max-bandwidth unlimited, as libvirt's `virsh save`
    sets it; QEMU's default caps a migration at 128 MiB/s) until query-migrate says `completed`,
    fsync(FILE) (deskd syncs its memory file), `quit` until the process has exited;
  - size on disk: FILE, apparent and allocated;
  - resume: a second QEMU with `-incoming file:FILE`, from its start until the agent's first
    /screenshot over vsock answered with a PNG (straight to the agent: there is no daemon), and
    until QMP's query-status says `running` (the stream loaded);
  - host memory 60 s after that first screenshot: the same smaps split (guest RAM: QEMU's anonymous
    RAM block).
Before each resume the L1's page cache is dropped (sync; drop_caches=3), for both alike, so each
reads its snapshot from the data disk (the rig's disk is a file on the host, whose own page cache
may still hold it). A guest-RAM mapping is any mapping of at least 256 MiB (deskd: 3 GiB below the
32-bit hole and 1 GiB above; QEMU: one 4 GiB block); their summed size is printed as a check.

Prints each figure for deskd and QEMU with the ratio QEMU/deskd, and how long each stage of the
bench took. Guests in the rig run 50-100x slower than native: the ratios are the claim, not the
absolute figures.
"""

import argparse
import base64
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "sdk"))
from rig_api_flow import Api, Failed, bash, expect, png_size, poll  # noqa: E402  (the API flow's client)

DATA = os.environ.get("DESKD_DATA", "/var/lib/deskd")
SOCK = os.environ.get("DESKD_SOCKET", "/run/deskd/deskd.sock")
WIDTH, HEIGHT = 1280, 720
AGENT_PORT = 1024
QEMU_CID = 42
# What deskd boots the image with (src/vmm/config.rs DEFAULT_CMDLINE, src/computers/vmm_config.rs).
QEMU_CMDLINE = ("console=ttyS0 reboot=k panic=1 root=/dev/vda rw "
                "deskd.resolution=1280x720x24 deskd.hostname=qemu-snapbench")
BIG_MAPPING_KIB = 256 * 1024
START = time.monotonic()
STAGES = []
LABEL = "snapshot bench"  # template_rig.py, which borrows these helpers, names itself


def say(text):
    print(f"{LABEL}: [{time.monotonic() - START:7.1f} s] {text}", flush=True)


class stage:
    """`with stage("name"):` records how long the block took."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.t = time.monotonic()
        say(f"{self.name} ...")

    def __exit__(self, *exc):
        took = time.monotonic() - self.t
        STAGES.append((self.name, took))
        say(f"{self.name}: {took:.1f} s{' (FAILED)' if exc[0] else ''}")


def memory_of(pid):
    """The process's RSS split by /proc/PID/smaps, KiB: total, guest-RAM mappings (size >= 256 MiB)
    and their summed size, the anonymous (privately written) part of those."""
    out = {"rss": 0, "guest_rss": 0, "guest_size": 0, "guest_anon": 0}
    big = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
            if m:
                size = (int(m.group(2), 16) - int(m.group(1), 16)) // 1024
                big = size >= BIG_MAPPING_KIB
                if big:
                    out["guest_size"] += size
                continue
            key, _, rest = line.partition(":")
            if key == "Rss":
                v = int(rest.split()[0])
                out["rss"] += v
                if big:
                    out["guest_rss"] += v
            elif key == "Anonymous" and big:
                out["guest_anon"] += int(rest.split()[0])
    out["own"] = out["rss"] - out["guest_rss"]
    return out


def du(paths):
    """(apparent bytes, allocated bytes) of files and directory trees."""
    apparent = allocated = 0
    for p in paths:
        walk = [(p, [], [""])] if os.path.isfile(p) else os.walk(p)
        for root, _, names in walk:
            for n in names:
                st = os.lstat(os.path.join(root, n) if n else root)
                apparent += st.st_size
                allocated += st.st_blocks * 512
    return apparent, allocated


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def record_guest_reset(what):
    faults = os.environ.get("RIG_FAULTS")
    if faults:
        with open(os.path.join(faults, "guest-reset"), "a") as f:
            f.write(f"snapshot bench: {what}\n")


# ---------------------------------------------------------------------------------------- deskd

def deskd_vmm_pid(cid):
    with open(os.path.join(DATA, "computers", cid, "vmm.pid")) as f:
        return int(f.read().split()[0])


def api_screenshot_ok(api, cid):
    try:
        code, data = api.call("GET", f"/api/computers/{cid}/screenshot", timeout=120)
    except (OSError, http.client.HTTPException):
        return False
    if code != 200 or not isinstance(data, dict) or "image" not in data:
        return False
    return png_size(base64.b64decode(data["image"])) == (WIDTH, HEIGHT)


def watch_status(api, cid, want, t0, out, limit_s=900):
    """In a thread: out[want] = seconds from t0 until the computer's status is `want`."""
    def run():
        while time.monotonic() - t0 < limit_s:
            s = api.status_of(cid)
            if s == want:
                out[want] = time.monotonic() - t0
                return
            if s == "error":
                out["error"] = True
                return
            time.sleep(0.25)
    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def vmm_log_ms(cid, pattern):
    """Milliseconds in the last line of the computer's VMM log (vmm.log, the VMM's own timing)
    matching `pattern`, whose one group is a Rust Duration's Debug form (`12.3ms`, `1.2s`) or a
    number of ms; None if no line matches."""
    path = os.path.join(DATA, "computers", cid, "vmm.log")
    try:
        with open(path, errors="replace") as f:
            found = re.findall(pattern, f.read())
    except OSError:
        return None
    if not found:
        return None
    m = re.fullmatch(r"([0-9.]+)(ns|µs|us|ms|s)?", found[-1])
    if not m:
        return None
    scale = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1000.0, None: 1.0}[m.group(2)]
    return float(m.group(1)) * scale


def bench_deskd(api, opts):
    r = {}
    ws = api.json("POST", "/api/workspaces", {"name": f"snapbench-{os.getpid()}"})["id"]
    with stage("deskd: create and boot the computer (until running and a screenshot)"):
        c = api.json("POST", "/api/computers",
                     {"workspace_id": ws, "name": "snapbench", "ram": opts.ram_gib, "cpu": 1})
        cid = c["id"]
        expect(c.get("ram") == opts.ram_gib, f"the computer was created with ram {c.get('ram')!r}")
        poll("the computer runs", lambda: api.status_of(cid) in ("running", "error"), 1800, every_s=2)
        expect(api.status_of(cid) == "running", f"the computer is {api.status_of(cid)} after its boot")
        poll("a screenshot of the booted computer", lambda: api_screenshot_ok(api, cid), 600, every_s=1)
    say(f"computer {cid} runs, {opts.ram_gib} GiB, 1 vCPU; VMM pid {deskd_vmm_pid(cid)}")
    boot = bash(api, cid, "cat /proc/sys/kernel/random/boot_id")
    with stage(f"deskd: settle {opts.settle} s"):
        time.sleep(opts.settle)
    r["rss_before"] = memory_of(deskd_vmm_pid(cid))

    with stage("deskd: suspend"):
        t0 = time.monotonic()
        ans = api.json("POST", f"/api/computers/{cid}/suspend", timeout=1200)
        r["suspend_s"] = time.monotonic() - t0
        expect(ans.get("status") == "suspended", f"suspend answered {ans}")
        c = api.json("GET", f"/api/computers/{cid}")
        expect(c["status"] == "suspended", f"after suspend the computer is {c['status']}")
    r["vmm_snapshot_ms"] = vmm_log_ms(cid, r"snapshot written to \S+ in (\d+) ms")
    saved = os.path.join(DATA, "computers", cid, "saved")
    r["apparent"], r["allocated"] = du([saved])
    r["api_saved_bytes"] = c.get("instance_details", {}).get("saved_vm_bytes")
    say(f"saved VM {saved}: {', '.join(f'{n} {os.path.getsize(os.path.join(saved, n))} B' for n in sorted(os.listdir(saved)))}; "
        f"the API's saved_vm_bytes {r['api_saved_bytes']}")

    with stage("deskd: resume (start until the first screenshot; page cache dropped first)"):
        drop_caches()
        status_times = {}
        t0 = time.monotonic()
        ans = api.json("POST", f"/api/computers/{cid}/start", timeout=900)
        r["start_answer_s"] = time.monotonic() - t0
        expect(ans.get("success") is True, f"start of the suspended computer answered {ans}")
        watcher = watch_status(api, cid, "running", t0, status_times)
        poll("a screenshot of the resumed computer", lambda: api_screenshot_ok(api, cid), 900, every_s=0.1)
        r["resume_shot_s"] = time.monotonic() - t0
        watcher.join(60)
        expect("error" not in status_times, "the resumed computer went to error")
        r["resume_running_s"] = status_times.get("running")
    r["vmm_restore_ms"] = vmm_log_ms(cid, r"VM restored in ([0-9.]+(?:ns|µs|us|ms|s)):")
    shot_at = time.monotonic()
    with stage(f"deskd: {opts.after} s after the first screenshot, then the resumed VMM's memory"):
        time.sleep(max(0.0, opts.after - (time.monotonic() - shot_at)))
        r["rss_after"] = memory_of(deskd_vmm_pid(cid))
    expect(bash(api, cid, "cat /proc/sys/kernel/random/boot_id") == boot, "the resume booted the guest anew")
    with stage("deskd: delete the computer"):
        api.json("DELETE", f"/api/computers/{cid}")
        api.json("DELETE", f"/api/workspaces/{ws}")
    return r


# ----------------------------------------------------------------------------------------- QEMU

class Qmp:
    """A QMP client on QEMU's Unix socket: one command at a time, events skipped."""

    def __init__(self, path, proc, timeout=120):
        deadline = time.monotonic() + timeout
        while True:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(path)
                break
            except OSError:
                s.close()
                if proc.poll() is not None:
                    raise Failed(f"QEMU exited with {proc.returncode} before its QMP socket answered")
                if time.monotonic() > deadline:
                    raise Failed(f"no QMP socket at {path} within {timeout} s")
                time.sleep(0.05)
        s.settimeout(600)
        self.f = s.makefile("rwb")
        self.read()  # the greeting
        self.cmd("qmp_capabilities")

    def read(self):
        line = self.f.readline()
        if not line:
            raise Failed("QEMU closed its QMP socket")
        return json.loads(line)

    def cmd(self, name, **arguments):
        msg = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        self.f.write(json.dumps(msg).encode() + b"\n")
        self.f.flush()
        while True:
            a = self.read()
            if "event" in a:
                continue
            if "error" in a:
                raise Failed(f"QMP {name}: {a['error']}")
            return a.get("return")


class VsockHTTP(http.client.HTTPConnection):
    """HTTP/1.1 to the guest agent over the L1's kernel vsock (QEMU's vhost-vsock)."""

    def __init__(self, cid, port, timeout):
        super().__init__("deskd-agent", timeout=timeout)
        self.cid, self.vport = cid, port

    def connect(self):
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect((self.cid, self.vport))
        except BaseException:
            s.close()
            raise
        self.sock = s


def agent_get(path, timeout=60):
    """(status, body) of one GET to the agent, or (None, error) when it cannot be reached."""
    conn = VsockHTTP(QEMU_CID, AGENT_PORT, timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException) as e:
        return None, str(e)
    finally:
        conn.close()


def agent_ready():
    code, body = agent_get("/health")
    return code == 200 and b'"ready":true' in body


def agent_screenshot_ok():
    code, body = agent_get("/screenshot", timeout=120)
    return code == 200 and png_size(body) == (WIDTH, HEIGHT)


class Qemu:
    def __init__(self, opts, work, disk, name, incoming=None):
        self.qmp_path = os.path.join(work, f"{name}.qmp")
        self.console = os.path.join(work, f"{name}.console.log")
        self.log = os.path.join(work, f"{name}.log")
        img = opts.image
        argv = ["qemu-system-x86_64", "-M", "microvm,acpi=on", "-enable-kvm", "-cpu", "host",
                "-m", str(opts.ram_gib * 1024), "-smp", "1", "-nodefaults", "-no-user-config",
                "-display", "none", "-no-reboot", "-serial", f"file:{self.console}",
                "-kernel", os.path.join(img, "kernel"), "-initrd", os.path.join(img, "initrd"),
                "-append", QEMU_CMDLINE,
                "-drive", f"id=root,file={disk},format=qcow2,if=none",
                "-device", "virtio-blk-device,drive=root",
                "-device", "virtio-rng-device",
                "-device", f"vhost-vsock-device,guest-cid={QEMU_CID}",
                "-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        if incoming:
            argv += ["-incoming", incoming]
        self.name = name
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))
        self.qmp = Qmp(self.qmp_path, self.proc)

    def check_alive(self, what):
        if self.proc.poll() is None:
            return
        with open(self.log, errors="replace") as f:
            err = f.read()[-600:]
        with open(self.console, errors="replace") as f:
            console = f.read()[-600:]
        if self.proc.returncode == 0:
            # -no-reboot: a guest reset (a triple fault under the emulated SVM) ends QEMU with 0.
            record_guest_reset(f"QEMU ({self.name}) ended with status 0 while {what}: the guest reset itself")
        raise Failed(f"QEMU ({self.name}) exited with {self.proc.returncode} while {what}: {err!r}; console: {console!r}")

    def wait_for(self, what, check, limit_s, every_s):
        def probe():
            self.check_alive(what)
            return check()
        return poll(what, probe, limit_s, every_s)

    def quit(self):
        if self.proc.poll() is None:
            try:
                self.qmp.cmd("quit")
            except (Failed, OSError):
                pass
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def bench_qemu(opts):
    r = {}
    work = os.path.join(DATA, "snapbench-qemu")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    disk = os.path.join(work, "disk.qcow2")
    state = os.path.join(work, "vm.state")
    # The disk deskd gives a computer: 8 GiB (disk_size_gb's default), the image's root fs grows.
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                    os.path.join(opts.image, "rootfs"), disk, "8G"], check=True)
    q = None
    try:
        with stage("qemu: boot (until the agent's /health ready and a /screenshot)"):
            q = Qemu(opts, work, disk, "boot")
            q.wait_for("QEMU's guest boots (agent /health ready)", agent_ready, 1800, 3)
            q.wait_for("a screenshot of QEMU's guest", agent_screenshot_ok, 600, 1)
        say(f"QEMU's guest is up after {time.monotonic() - q.t0:.0f} s; QEMU pid {q.proc.pid}")
        with stage(f"qemu: settle {opts.settle} s"):
            time.sleep(opts.settle)
            q.check_alive("settling")
        r["rss_before"] = memory_of(q.proc.pid)

        with stage("qemu: suspend (stop, migrate to file, fsync, quit)"):
            # What libvirt's `virsh save` sets for a migration to a file: no bandwidth cap.
            q.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 50})
            t0 = time.monotonic()
            q.qmp.cmd("stop")
            q.qmp.cmd("migrate", uri=f"file:{state}")
            while True:
                m = q.qmp.cmd("query-migrate")
                if m.get("status") == "completed":
                    break
                if m.get("status") in ("failed", "cancelled"):
                    raise Failed(f"QEMU's migration to {state} {m.get('status')}: {m.get('error-desc', m)}")
                time.sleep(0.02)
            r["migrate_s"] = time.monotonic() - t0
            fd = os.open(state, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            r["fsync_s"] = time.monotonic() - t0
            q.quit()
            r["suspend_s"] = time.monotonic() - t0
            r["migrate_info"] = m
        q = None
        r["apparent"], r["allocated"] = du([state])
        ram = r["migrate_info"].get("ram", {})
        say(f"migration: {ram.get('transferred')} B transferred, {ram.get('normal')} normal pages, "
            f"{ram.get('duplicate')} zero pages, QEMU's total-time {r['migrate_info'].get('total-time')} ms")

        with stage("qemu: resume (-incoming file: until the first screenshot; page cache dropped first)"):
            drop_caches()
            q = Qemu(opts, work, disk, "resume", incoming=f"file:{state}")
            t0 = q.t0
            running = {}

            def watch():
                # The stream carries the source's run state, and the source was stopped before its
                # migration: the destination loads it and stays paused until told to go on, which is
                # what libvirt's `virsh restore` does with a `cont` (and so do we).
                while q.proc.poll() is None and time.monotonic() - t0 < 900:
                    try:
                        status = q.qmp.cmd("query-status").get("status")
                        if status == "paused":
                            running["loaded_s"] = time.monotonic() - t0
                            q.qmp.cmd("cont")
                        elif status == "running":
                            running["s"] = time.monotonic() - t0
                            return
                    except (Failed, OSError):
                        return
                    time.sleep(0.02)
            th = threading.Thread(target=watch, daemon=True)
            th.start()
            q.wait_for("a screenshot of QEMU's resumed guest", agent_screenshot_ok, 900, 0.1)
            r["resume_shot_s"] = time.monotonic() - t0
            th.join(60)
            r["resume_running_s"] = running.get("s")
            r["resume_loaded_s"] = running.get("loaded_s")
        shot_at = time.monotonic()
        with stage(f"qemu: {opts.after} s after the first screenshot, then the resumed QEMU's memory"):
            time.sleep(max(0.0, opts.after - (time.monotonic() - shot_at)))
            q.check_alive("running after the resume")
            r["rss_after"] = memory_of(q.proc.pid)
    finally:
        if q is not None:
            q.quit()
        shutil.rmtree(work, ignore_errors=True)
    return r


# --------------------------------------------------------------------------------------- report

def row(label, a, b, fmt):
    """One figure of two columns and their ratio b/a."""
    fa = "-" if a is None else fmt.format(a)
    fb = "-" if b is None else fmt.format(b)
    ratio = f"{b / a:9.2f}x" if a and b is not None else f"{'-':>10}"
    print(f"  {label:58} {fa:>10} {fb:>10} {ratio}")


def print_stages(start):
    print("  stages of this bench:")
    for name, took in STAGES:
        print(f"    {took:8.1f} s  {name}")
    print(f"    {time.monotonic() - start:8.1f} s  in all", flush=True)


def report(d, q, opts):
    """The figures side by side: deskd, QEMU, QEMU/deskd."""
    def get(r, *keys):
        for k in keys:
            r = r.get(k) if isinstance(r, dict) else None
        return r

    def in_mib(r, *keys, unit=1024):
        v = get(r, *keys)
        return None if v is None else v * unit / 2**20

    print()
    print(f"snapshot bench: the {opts.variant} image ({os.path.basename(opts.image.rstrip('/'))}), "
          f"{opts.ram_gib} GiB RAM, 1 vCPU, one rig run, one guest at a time.")
    print("  Figures are the rig's (guests run 50-100x slower than native): the ratios are the claim.")
    print(f"  {'':58} {'deskd':>10} {'QEMU':>10} {'QEMU/deskd':>10}")
    row("suspend (s) [deskd: POST suspend; QEMU: stop..quit]", get(d, "suspend_s"), get(q, "suspend_s"), "{:.2f}")
    row("  deskd: the VMM's snapshot write, paused (its log) (s)",
        None if get(d, "vmm_snapshot_ms") is None else get(d, "vmm_snapshot_ms") / 1000, None, "{:.2f}")
    row("  QEMU: stop + migrate until completed (s)", None, get(q, "migrate_s"), "{:.2f}")
    row("  QEMU: ... + fsync of the file (s)", None, get(q, "fsync_s"), "{:.2f}")
    row("snapshot on disk, allocated (MiB)", in_mib(d, "allocated", unit=1), in_mib(q, "allocated", unit=1), "{:.0f}")
    row("snapshot on disk, apparent size (MiB)", in_mib(d, "apparent", unit=1), in_mib(q, "apparent", unit=1), "{:.0f}")
    row("resume to first screenshot (s)", get(d, "resume_shot_s"), get(q, "resume_shot_s"), "{:.2f}")
    row("  resume to running (deskd: status; QEMU: query-status) (s)",
        get(d, "resume_running_s"), get(q, "resume_running_s"), "{:.2f}")
    row("  deskd: the VMM building the VM from the snapshot (its log) (s)",
        None if get(d, "vmm_restore_ms") is None else get(d, "vmm_restore_ms") / 1000, None, "{:.3f}")
    row("  QEMU: the stream loaded (paused, before its `cont`) (s)", None, get(q, "resume_loaded_s"), "{:.2f}")
    row("  deskd: POST start answered (s)", get(d, "start_answer_s"), None, "{:.2f}")
    for when, key in (("before the suspend", "rss_before"),
                      (f"resumed, {opts.after} s after its first screenshot", "rss_after")):
        print(f"  host memory of the VM {when} (MiB):")
        row("    RSS", in_mib(d, key, "rss"), in_mib(q, key, "rss"), "{:.0f}")
        row("    of it guest RAM", in_mib(d, key, "guest_rss"), in_mib(q, key, "guest_rss"), "{:.0f}")
        row("      of that anonymous (written privately)", in_mib(d, key, "guest_anon"), in_mib(q, key, "guest_anon"), "{:.0f}")
        row("    the VMM's own (RSS minus guest RAM)", in_mib(d, key, "own"), in_mib(q, key, "own"), "{:.0f}")
        row("    (check: guest RAM mapped)", in_mib(d, key, "guest_size"), in_mib(q, key, "guest_size"), "{:.0f}")
    print_stages(START)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", required=True, help="the built image folder (images/build.sh --print-dir)")
    p.add_argument("--variant", default="desktop")
    p.add_argument("--ram-gib", type=int, default=4)
    p.add_argument("--settle", type=int, default=int(os.environ.get("BENCH_SETTLE", "30")),
                   help="seconds between the guest being up and the suspend (BENCH_SETTLE)")
    p.add_argument("--after", type=int, default=60, help="seconds after the first screenshot to read memory")
    p.add_argument("--only", choices=("deskd", "qemu"), help="one side only (to debug the bench)")
    opts = p.parse_args()
    if not os.path.exists("/dev/kvm"):
        print("snapshot bench: SKIPPED: no /dev/kvm (run benches/snapshot-rig, which uses the rig)")
        return 0
    d = q = None
    try:
        if opts.only != "qemu":
            with open(os.path.join(DATA, "initial-api-key")) as f:
                api = Api(SOCK, f.read().strip())
            d = bench_deskd(api, opts)
        if opts.only != "deskd":
            q = bench_qemu(opts)
    except Failed as e:
        say(f"FAILED: {e}")
        report(d, q, opts)
        return 1
    report(d, q, opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
