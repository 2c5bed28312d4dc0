#!/usr/bin/env python3
"""Launch from a template's golden snapshot next to a cold boot of the same image (issue 14).

Run inside the rig by `benches/snapshot-rig --bench template`, next to a `deskd serve` whose data
disk offers the desktop image as the default template. Same run, same image, same computer size
(--ram-gib, 1 vCPU):

- publish and build a small template (one `build.run` step, no packages: no network needed); the
  build boots the image cold, runs the step and saves the golden snapshot;
- time, one computer at a time (each deleted before the next): `POST /computers` until the first
  `GET /computers/ID/screenshot` that answers a PNG of the desktop's size (through the daemon, which
  forwards to the agent over vsock), and until the status is `running`, for --n launches with
  `template_ref` and --cold-n cold boots without it; p50, min, max of each;
- host memory: --mem-n computers of each kind running at once, launched one after the other, read
  --after seconds after the last one's first screenshot: summed RSS, PSS (pages shared between
  processes, as the golden memory file's, counted once across them) and private memory of their
  VMMs, and how much the L1's MemAvailable fell from before the first of them was created.

Prints each figure for the template launches and the cold boots with the ratio cold/template, and
how long each stage of the bench took. Guests in the rig run 50-100x slower than native: the ratios
are the claim, not the absolute figures.
"""

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "sdk"))
from rig_api_flow import Api, Failed, expect, poll  # noqa: E402  (the API flow's client)
import snapshot_rig  # noqa: E402
from snapshot_rig import api_screenshot_ok, deskd_vmm_pid, print_stages, row, say, stage  # noqa: E402

DATA = os.environ.get("DESKD_DATA", "/var/lib/deskd")
SOCK = os.environ.get("DESKD_SOCKET", "/run/deskd/deskd.sock")
NAME, VERSION = "bench-template", "1.0.0"
REF = f"default/{NAME}@{VERSION}"
TEMPLATE = {
    "api_version": "orgo.ai/v1",
    "template": {"name": NAME, "version": VERSION, "description": "benches/template_rig.py"},
    "hardware": {"cpu": 1, "ram_gb": 4},
    "build": {"run": ["mkdir -p /var/lib/bench && echo built > /var/lib/bench/built"]},
}
START = time.monotonic()


def build(api):
    """Publishes and builds the template; the build's answer once ready."""
    code, published = api.call("POST", "/api/templates", TEMPLATE)
    expect(code in (200, 201), f"POST /api/templates answered {code}: {published}")
    base = f"/api/templates/default/{NAME}/{VERSION}/build"
    code, started = api.call("POST", base)
    expect(code in (200, 202), f"POST {base} answered {code}: {started}")

    def ended():
        b = api.json("GET", base)
        return b if b.get("status") in ("ready", "failed") else None
    done = poll("the template's build", ended, 2400, every_s=2)
    expect(done.get("status") == "ready", f"the build ended {done.get('status')}: {done.get('error')}")
    return done


def launch(api, ws, name, template, ram):
    """(id, seconds to the first screenshot, seconds to running) of one new computer."""
    body = {"project_id": ws, "name": name, "ram": ram, "cpu": 1}
    if template:
        body["template_ref"] = REF
    t0 = time.monotonic()
    cid = api.json("POST", "/api/computers", body)["id"]
    running = None
    while True:
        elapsed = time.monotonic() - t0
        if elapsed > 1800:
            raise Failed(f"{name} ({cid}) gave no screenshot within 1800 s")
        if running is None:
            status = api.status_of(cid)
            if status == "error":
                c = api.json("GET", f"/api/computers/{cid}")
                raise Failed(f"{name} ({cid}) went to error: {c.get('status_reason')}")
            if status == "running":
                running = time.monotonic() - t0
        if api_screenshot_ok(api, cid):
            shot = time.monotonic() - t0
            return cid, shot, running if running is not None else shot
        # Fine steps while a restore may answer, coarse ones through a cold boot.
        time.sleep(0.02 if elapsed < 20 else 0.5)


def delete(api, cid):
    api.json("DELETE", f"/api/computers/{cid}")
    poll(f"{cid} gone", lambda: api.call("GET", f"/api/computers/{cid}", timeout=30)[0] == 404, 600, every_s=0.5)


def rollup(pid):
    """KiB from /proc/PID/smaps_rollup: Rss, Pss and private (clean + dirty)."""
    out = {"rss": 0, "pss": 0, "private": 0}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if not rest.strip().endswith("kB"):
                continue
            v = int(rest.split()[0])
            if key == "Rss":
                out["rss"] += v
            elif key == "Pss":
                out["pss"] += v
            elif key in ("Private_Clean", "Private_Dirty"):
                out["private"] += v
    return out


def mem_available_kib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    raise Failed("no MemAvailable in /proc/meminfo")


def timings(api, ws, template, n, ram):
    kind = "template" if template else "cold"
    shots, runs = [], []
    for i in range(n):
        cid, shot, running = launch(api, ws, f"{kind}-{i}", template, ram)
        say(f"{kind} {i + 1}/{n}: {cid} first screenshot after {shot * 1000:.0f} ms, running after {running * 1000:.0f} ms")
        shots.append(shot)
        runs.append(running)
        delete(api, cid)
    return {"shot": shots, "running": runs}


def memory(api, ws, template, n, ram, after):
    kind = "template" if template else "cold"
    before = mem_available_kib()
    cids = []
    try:
        for i in range(n):
            cid, shot, _ = launch(api, ws, f"{kind}-mem-{i}", template, ram)
            say(f"{kind} (memory) {i + 1}/{n}: {cid} first screenshot after {shot * 1000:.0f} ms")
            cids.append(cid)
        time.sleep(after)
        total = {"rss": 0, "pss": 0, "private": 0}
        for cid in cids:
            r = rollup(deskd_vmm_pid(cid))
            for k in total:
                total[k] += r[k]
        total["available_drop"] = before - mem_available_kib()
        return total
    finally:
        for cid in cids:
            delete(api, cid)


def report(build_ms, t, c, mt, mc, opts):
    def stat(d, key, f):
        return f(d[key]) * 1000 if d and d.get(key) else None

    print()
    print(f"template bench: the desktop image, {opts.ram_gib} GiB RAM, 1 vCPU each, one rig run; "
          f"template build {build_ms} ms.")
    print("  Figures are the rig's (guests run 50-100x slower than native): the ratios are the claim.")
    print(f"  {'':58} {'template':>10} {'cold boot':>10} {'cold/tmpl':>10}")
    n_t = len(t["shot"]) if t else 0
    n_c = len(c["shot"]) if c else 0
    print(f"  POST /computers to the first screenshot, ms ({n_t} launches, {n_c} cold boots):")
    row("    p50", stat(t, "shot", statistics.median), stat(c, "shot", statistics.median), "{:.0f}")
    row("    min", stat(t, "shot", min), stat(c, "shot", min), "{:.0f}")
    row("    max", stat(t, "shot", max), stat(c, "shot", max), "{:.0f}")
    print("  POST /computers to status running, ms:")
    row("    p50", stat(t, "running", statistics.median), stat(c, "running", statistics.median), "{:.0f}")
    print(f"  host memory of {opts.mem_n} computers running at once, {opts.after} s after the last one's "
          "first screenshot (MiB):")
    for label, key in (("summed RSS of their VMMs", "rss"), ("summed PSS (shared pages counted once)", "pss"),
                       ("summed private memory", "private"), ("fall of the L1's MemAvailable", "available_drop")):
        row(f"    {label}", mt and mt[key] / 1024, mc and mc[key] / 1024, "{:.0f}")
    print_stages(START)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", help="unused (the daemon's default image is the one benched)")
    p.add_argument("--variant", default="desktop")
    p.add_argument("--ram-gib", type=int, default=4, help="RAM of every computer (the template's too)")
    p.add_argument("--n", type=int, default=10, help="template launches timed")
    p.add_argument("--cold-n", type=int, default=10, help="cold boots timed")
    p.add_argument("--mem-n", type=int, default=5, help="computers of each kind running at once for memory")
    p.add_argument("--after", type=int, default=60, help="seconds after the last first screenshot to read memory")
    opts = p.parse_args()
    TEMPLATE["hardware"]["ram_gb"] = opts.ram_gib
    snapshot_rig.LABEL = "template bench"
    if not os.path.exists("/dev/kvm"):
        print("template bench: SKIPPED: no /dev/kvm (run benches/snapshot-rig --bench template, which uses the rig)")
        return 0
    with open(os.path.join(DATA, "initial-api-key")) as f:
        api = Api(SOCK, f.read().strip())
    build_ms = t = c = mt = mc = None
    status = 0
    try:
        with stage("publish and build the template"):
            build_ms = build(api).get("build_time_ms")
        ws = api.json("POST", "/api/projects", {"name": "template-bench"})["id"]
        with stage(f"time {opts.n} launches from the template"):
            t = timings(api, ws, True, opts.n, opts.ram_gib)
        with stage(f"memory of {opts.mem_n} launches from the template"):
            mt = memory(api, ws, True, opts.mem_n, opts.ram_gib, opts.after)
        with stage(f"time {opts.cold_n} cold boots"):
            c = timings(api, ws, False, opts.cold_n, opts.ram_gib)
        with stage(f"memory of {opts.mem_n} cold boots"):
            mc = memory(api, ws, False, opts.mem_n, opts.ram_gib, opts.after)
    except Failed as e:
        say(f"FAILED: {e}")
        status = 1
    report(build_ms, t, c, mt, mc, opts)
    return status


if __name__ == "__main__":
    sys.exit(main())
