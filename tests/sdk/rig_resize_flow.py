#!/usr/bin/env python3
"""Resize without CPU or memory hotplug (issue 17), through deskd, in the style of rig_api_flow.py.

`check_resize(api, cid, stored_vcpus=2, stored_mem_gb=8)` runs on a running computer `cid` with
the default shape (1 vCPU, 4 GB, an 8 GB disk):

  live: the disk grown to 12 GB answers 200 with the filesystem's new size, and inside, without a
  reboot, /dev/vda is 12 GiB and `df /` shows the root filesystem on it (time from the request to
  the answer, and to what the guest shows, printed as the benchmark); more written than the old
  disk had free; a shrink is 400; a mix of a possible change (the same disk size again)
  and an impossible one (vCPUs) is 207, vCPUs and memory alone 422, each saying CPU or memory
  hotplug is not supported yet;
  suspended after the growth: vCPUs, memory and disk are refused (409), a bandwidth limit is
  stored; resumed: same boot, still a 12 GiB disk (the restored VM and its disk agree);
  stopped: vCPUs, memory and disk stored (200, takes_effect next_start); started: `nproc`,
  MemTotal, /dev/vda and `df /` show the stored shape (the root filesystem grown at boot).

In `make test` rig_api_flow.flow runs `check_resize` on its own computer once the suspend, clone
and SDK steps are done (`RIG_RESIZE_FLOW=0` leaves it out): that computer has the default shape,
so the checks cost no boot of their own, only the stop and start, one cold boot (about 80 s in
the rig on QEMU 10). There the stored shape is 1 vCPU (`RIG_RESIZE_VCPUS`, default 1): a 2-vCPU
desktop triple-faults in this emulator about half the time (tests/rig/README.md, "Faults of the
emulator"), which would make the suite fail or retry at random; the stored disk still shows
that a stored shape is what the next start boots (the memory stays 4 GB unless RIG_RESIZE_MEM_GB
says 8: the API takes 4, 8, 16 or 32 GB, and the rig's L1 has 8 GB). `stored_vcpus=2`, what
issue 17's SMP work is about, is the default of the flow run alone.

Run alone (`tests/sdk-rig-e2e --resize-only`): `rig_resize_flow.py --info-dir DIR` creates a
workspace and a computer, waits for it and runs the checks with a stored shape of
`RIG_RESIZE_VCPUS` (default 2) vCPUs and `RIG_RESIZE_MEM_GB` (default 4) GB. Prints each step with
its time; exits 1 on the first mismatch.
"""

import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rig_api_flow import bash, expect, poll, run_flow, step  # noqa: E402

GIB = 1 << 30


def resize(api, cid, body, timeout=900):
    """(HTTP status, JSON answer) of PATCH /api/computers/{cid}/resize."""
    return api.call("PATCH", f"/api/computers/{cid}/resize", body, timeout)


def ints(out, n, what):
    """The `n` whole numbers a guest command printed, or a Failed naming `what` and the output."""
    words = out.split()
    expect(len(words) == n and all(w.isdigit() for w in words), f"{what}: the guest printed {out!r}")
    return [int(w) for w in words]


def guest_disk(api, cid):
    """(bytes of /dev/vda, bytes of the root filesystem, bytes free on it), as the guest sees them."""
    # The desktop user's bash: no blockdev (root's /usr/sbin); the kernel's size of vda is in
    # 512-byte sectors, whatever the device's block size.
    out = bash(api, cid, "set -o pipefail; echo $(( $(cat /sys/block/vda/size) * 512 )); "
                         "df -B1 --output=size,avail / | tail -1")
    disk, size, avail = ints(out, 3, "the disk's and the root filesystem's sizes")
    return disk, size, avail


def boot_id(api, cid):
    return bash(api, cid, "cat /proc/sys/kernel/random/boot_id")


def wait_running(api, cid, what, limit_s=900):
    poll(what, lambda: api.status_of(cid) in ("running", "error"), limit_s, every_s=1)
    expect(api.status_of(cid) == "running", f"{what}: the computer is {api.status_of(cid)}")


def check_live_growth(api, cid):
    boot = boot_id(api, cid)
    disk, fs, avail_before = guest_disk(api, cid)
    expect(disk == 8 * GIB, f"the disk starts at {disk} bytes, not 8 GiB")
    t0 = time.monotonic()
    code, r = resize(api, cid, {"disk_size_gb": 12})
    answered = time.monotonic() - t0
    expect(code == 200, f"growing the disk answered {code}: {r}")
    entry = r["results"]["disk_gb"]
    expect(entry.get("ok") is True and entry.get("applied") == 12 and r["disk_size_gb"] == 12,
           f"growing the disk: {r}")
    expect(r.get("takes_effect") == "now", f"takes_effect {r.get('takes_effect')!r}")
    fs_bytes = entry.get("filesystem_bytes") or 0
    expect(fs_bytes >= 0.9 * 12 * GIB, f"the answer's filesystem is {fs_bytes} bytes")
    disk2, fs2, avail = guest_disk(api, cid)
    visible = time.monotonic() - t0
    expect(disk2 == 12 * GIB, f"inside, /dev/vda is {disk2} bytes, not 12 GiB")
    expect(fs2 >= 0.9 * 12 * GIB and fs2 > fs, f"inside, / is {fs2} bytes (was {fs})")
    expect(boot_id(api, cid) == boot, "the guest rebooted for the growth")
    step(f"disk 8 -> 12 GB live: answered in {answered:.1f} s, visible in the guest at {visible:.1f} s "
         f"(/dev/vda {disk2} bytes, / {fs2} bytes, was {fs}); same boot")

    # Space the old disk did not have: more than was free before, written.
    want = avail_before + GIB // 2
    expect(avail > want, f"{avail} bytes free after the growth, {avail_before} before")
    bash(api, cid, f"fallocate -l {want} /home/user/grown.bin && sync && rm /home/user/grown.bin")
    step(f"{want} bytes written into the grown filesystem ({avail_before} were free before)")

    code, r = resize(api, cid, {"disk_size_gb": 10})
    expect(code == 400 and "can only grow" in r.get("error", ""), f"a shrink answered {code}: {r}")
    step(f"shrink: 400 ({r['error']})")

    code, r = resize(api, cid, {"vcpus": 2, "disk_size_gb": 12})
    expect(code == 207 and r.get("partial") is True, f"a mixed resize answered {code}: {r}")
    v, d = r["results"]["vcpus"], r["results"]["disk_gb"]
    expect(v["ok"] is False and v["applied"] == 1 and "not supported" in v["error"], f"vcpus: {v}")
    expect(d["ok"] is True and d["applied"] == 12, f"disk: {d}")
    step(f"vCPUs and the same disk size: 207 (vcpus: {v['error']})")

    code, r = resize(api, cid, {"vcpus": 2, "mem_gb": 8})
    expect(code == 422 and r.get("partial") is False, f"vCPUs and memory answered {code}: {r}")
    for name in ("vcpus", "mem_mb"):
        e = r["results"][name]
        expect(e["ok"] is False and "not supported by deskd's VMM yet" in e["error"], f"{name}: {e}")
    step("vCPUs and memory alone: 422, each 'not supported by deskd's VMM yet'")
    return boot


def check_suspended(api, cid, boot):
    r = api.json("POST", f"/api/computers/{cid}/suspend", timeout=900)
    expect(r.get("status") == "suspended", f"suspend answered {r}")
    for body in ({"vcpus": 2}, {"mem_gb": 8}, {"disk_size_gb": 16}):
        code, r = resize(api, cid, body)
        expect(code == 409 and "saved VM" in r.get("error", ""), f"suspended, {body} answered {code}: {r}")
    code, r = resize(api, cid, {"bandwidth_limit_mbps": 50})
    expect(code == 200 and r.get("bandwidth_limit_mbps") == 50 and r.get("takes_effect") == "next_start",
           f"suspended, a bandwidth limit answered {code}: {r}")
    step("suspended: vCPUs, memory and disk 409 (its saved VM holds them); a bandwidth limit stored")
    api.json("POST", f"/api/computers/{cid}/start")
    wait_running(api, cid, "the suspended computer resumes", 300)
    expect(boot_id(api, cid) == boot, "the resume booted the guest anew")
    disk, fs, _ = guest_disk(api, cid)
    expect(disk == 12 * GIB and fs >= 0.9 * 12 * GIB, f"after the resume: /dev/vda {disk}, / {fs}")
    step(f"resumed: same boot, /dev/vda still {disk} bytes")
    # No limit for what follows (100 Gbit/s is none in practice).
    code, r = resize(api, cid, {"bandwidth_limit_mbps": 100_000})
    expect(code == 200, f"lifting the limit answered {code}: {r}")


def check_stored(api, cid, vcpus, mem_gb):
    api.json("POST", f"/api/computers/{cid}/stop")
    poll("the computer stops", lambda: api.status_of(cid) == "stopped", 300)
    body = {"vcpus": vcpus, "mem_gb": mem_gb, "disk_size_gb": 16}
    code, r = resize(api, cid, body)
    expect(code == 200 and r.get("takes_effect") == "next_start", f"stopped, {body} answered {code}: {r}")
    expect((r["vcpus"], r["mem_gb"], r["disk_size_gb"]) == (vcpus, mem_gb, 16), f"stored: {r}")
    step(f"stopped: {body} stored for the next start")
    t0 = time.monotonic()
    api.json("POST", f"/api/computers/{cid}/start")
    wait_running(api, cid, "the resized computer boots")
    out = bash(api, cid, "nproc; awk '/MemTotal/ {print $2}' /proc/meminfo")
    cpus, mem_kib = ints(out, 2, "nproc and MemTotal")
    mem = mem_kib * 1024
    disk, fs, _ = guest_disk(api, cid)
    expect(cpus == vcpus, f"nproc says {cpus}, not {vcpus}")
    # The kernel keeps some for itself: MemTotal is a little below the RAM the VM has.
    expect(0.85 * mem_gb * GIB < mem <= mem_gb * GIB, f"MemTotal is {mem} bytes for {mem_gb} GB")
    expect(disk == 16 * GIB and fs >= 0.9 * 16 * GIB, f"/dev/vda {disk}, / {fs} after the start")
    step(f"started in {time.monotonic() - t0:.0f} s with the stored shape: {cpus} vCPUs, MemTotal {mem} bytes, "
         f"/dev/vda {disk} bytes, / {fs} bytes (grown at boot)")


def check_resize(api, cid, stored_vcpus=2, stored_mem_gb=8):
    t0 = time.monotonic()
    boot = check_live_growth(api, cid)
    check_suspended(api, cid, boot)
    check_stored(api, cid, stored_vcpus, stored_mem_gb)
    step(f"resize checks done in {time.monotonic() - t0:.0f} s (stored shape {stored_vcpus} vCPU(s), {stored_mem_gb} GB)")


def stored_shape(default_vcpus):
    """(vCPUs, GB of memory) the stopped computer is resized to: RIG_RESIZE_VCPUS (else
    `default_vcpus`) and RIG_RESIZE_MEM_GB (else 4, what it has: the API takes 4, 8, 16 or 32 GB,
    and an 8 GB guest in the rig's 8 GB L1 has not been tried; RIG_RESIZE_MEM_GB=8 tries it)."""
    return int(os.environ.get("RIG_RESIZE_VCPUS", default_vcpus)), int(os.environ.get("RIG_RESIZE_MEM_GB", "4"))


def standalone(api, _read):
    ws = api.json("POST", "/api/projects", {"name": f"resize-{uuid.uuid4().hex[:6]}"})["id"]
    cid = api.json("POST", "/api/computers", {"project_id": ws, "name": "resize-1", "cpu": 1, "ram": 4,
                                              "disk_size_gb": 8})["id"]
    wait_running(api, cid, "the computer runs")
    vcpus, mem_gb = stored_shape(2)
    check_resize(api, cid, stored_vcpus=vcpus, stored_mem_gb=mem_gb)
    r = api.json("DELETE", f"/api/computers/{cid}")
    expect(r.get("success") is True, f"delete answered {r}")


def main():
    return run_flow(__doc__, standalone, passed="all resize steps passed")


if __name__ == "__main__":
    sys.exit(main())
