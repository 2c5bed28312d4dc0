#!/usr/bin/env python3
"""Boot-to-userspace time and VMM memory overhead: deskd's VMM against QEMU `-M microvm`.

Run inside the rig by benches/vmm-boot (real KVM). Both VMMs boot the same Debian cloud kernel
(bzImage) and the same initrd (tests/vmm/make-initrd) with 1 vCPU and 256 MiB; the initrd's
/init prints `DESKD-USERSPACE-UP` on the serial console as its first action, then loads its
modules, prints `DESKD-IGNORING-POWER-BUTTON` and idles.

- boot time: from just before the VMM process is started to the marker appearing in the serial
  log file (polled every 5 ms); the guest's own /proc/uptime at the marker is printed too.
- VMM overhead: once the guest idles, the VMM process's RSS minus the RSS of its guest-RAM mapping
  (from /proc/PID/smaps), i.e. the VMM's own memory, not the guest pages it touched.

Runs are interleaved (deskd, deskd --guest-decompress, QEMU, repeat) so machine noise hits all
alike; medians and the QEMU/deskd ratios are printed at the end.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

MEM_MIB = 256
CMDLINE = "console=ttyS0 reboot=k panic=1 quiet deskd.test=hang"
MARKER = "DESKD-USERSPACE-UP"
IDLE = "DESKD-IGNORING-POWER-BUTTON"


def variants(opts):
    deskd = [opts.deskd, "vmm", "--kernel", opts.kernel, "--initrd", opts.initrd,
             "--cmdline", CMDLINE, "--vcpus", "1", "--memory", str(MEM_MIB), "--no-rng"]
    qemu = ["qemu-system-x86_64", "-M", "microvm", "-enable-kvm", "-cpu", "host",
            "-m", str(MEM_MIB), "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
            "-kernel", opts.kernel, "-initrd", opts.initrd, "-append", CMDLINE]
    return {
        "deskd": lambda log: deskd + ["--console-log", log],
        "deskd --guest-decompress": lambda log: deskd + ["--console-log", log, "--guest-decompress"],
        "qemu microvm": lambda log: qemu + ["-serial", f"file:{log}"],
    }


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def vmm_overhead_kib(pid):
    """(total RSS, guest RAM RSS) in KiB: the guest RAM is the anonymous mapping of the guest's size."""
    total = guest = 0
    size = 0
    is_anon = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                fields = line.split()
                is_anon = len(fields) < 6 or fields[5].startswith("[anon")
                continue
            if line.startswith("Size:"):
                size = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
                total += rss
                if is_anon and MEM_MIB * 1024 <= size <= MEM_MIB * 1024 * 11 // 10:
                    guest += rss
    return total, guest


def run_once(name, argv, log, timeout):
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        marker_at = None
        uptime = None
        while time.monotonic() - start < timeout:
            text = read(log)
            if marker_at is None and MARKER in text:
                marker_at = time.monotonic() - start
            # The serial console delivers the line byte by byte: parse it once it is complete.
            m = re.search(MARKER + r" uptime=([0-9.]+)\r?\n", text)
            if m:
                uptime = float(m.group(1))
            if marker_at is not None and uptime is not None and IDLE in text:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: "
                                   f"{proc.stderr.read().decode(errors='replace')[-800:]}")
            time.sleep(0.005)
        else:
            raise RuntimeError(f"{name}: no marker within {timeout} s")
        time.sleep(1.0)  # let the guest settle into idle
        total, guest = vmm_overhead_kib(proc.pid)
        return {"boot_s": marker_at, "uptime_s": uptime, "rss_kib": total,
                "guest_kib": guest, "overhead_kib": total - guest}
    finally:
        proc.kill()
        proc.wait()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--deskd", required=True)
    p.add_argument("--kernel", required=True)
    p.add_argument("--initrd", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--timeout", type=int, default=300)
    opts = p.parse_args()
    if not os.path.exists("/dev/kvm"):
        print("vmm bench: SKIPPED: no /dev/kvm (run benches/vmm-boot, which uses the rig)")
        return 0
    tmp = tempfile.mkdtemp(prefix="deskd-vmm-bench-")
    results = {name: [] for name in variants(opts)}
    for r in range(opts.rounds):
        for name, make_argv in variants(opts).items():
            log = os.path.join(tmp, f"{r}-{name.replace(' ', '_')}.log")
            res = run_once(name, make_argv(log), log, opts.timeout)
            results[name].append(res)
            print(f"round {r + 1} {name:26s} boot {res['boot_s']:6.2f} s  "
                  f"(guest uptime {res['uptime_s']} s)  RSS {res['rss_kib'] / 1024:6.1f} MiB  "
                  f"guest {res['guest_kib'] / 1024:6.1f} MiB  VMM overhead "
                  f"{res['overhead_kib'] / 1024:6.1f} MiB", flush=True)
    med = {name: {k: statistics.median(x[k] for x in rs) for k in ("boot_s", "overhead_kib")}
           for name, rs in results.items()}
    print(f"\nmedian of {opts.rounds} rounds, 1 vCPU, {MEM_MIB} MiB, same kernel and initrd:")
    for name, m in med.items():
        print(f"  {name:26s} boot to userspace {m['boot_s']:6.2f} s   "
              f"VMM overhead {m['overhead_kib'] / 1024:6.1f} MiB")
    d, q = med["deskd"], med["qemu microvm"]
    print(f"  ratio qemu/deskd: boot time {q['boot_s'] / d['boot_s']:.2f}x, "
          f"VMM overhead {q['overhead_kib'] / max(d['overhead_kib'], 1):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
