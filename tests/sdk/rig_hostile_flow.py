#!/usr/bin/env python3
"""A hostile guest beside a well-behaved one, through deskd in the rig (issue 13), in the style of
rig_api_flow.py. `check_hostile_guest(api, hostile, neighbour, ctl)` needs both computers running:

  inside `hostile` a root script stops the real agent and puts its own program on the agent's
  vsock port (deskd_agent::protocol::VSOCK_PORT, 1024) in three phases: one that listens and never
  accepts (the backlog fills: later connections are refused), one that accepts and trickles its
  answer a byte every 2 s, one that answers every request with 100 MB (chunked, or with that
  Content-Length); then it starts the real agent again. Meanwhile this host calls `bash` on the
  hostile computer over and over (each call must end within the daemon's deadline with 502, 503
  or 504, never hang; 502 and 504 must both be seen, so the trickle and the 100 MB were met), and
  `GET /computers/{neighbour}` (every one must answer) and the neighbour's `bash` (it must work).
  The daemon's peak RSS in the window (VmHWM, reset before it through the rig's supervisor) must
  stay within 100 MiB of its RSS before: one 100 MB answer held whole would not. Afterwards the
  hostile computer's agent answers again. The neighbour's GET latency p50/p99 is printed with and
  without the hostile guest, same run (the issue's benchmark).

RIG_HOSTILE_FLOW=0 leaves it out of the API flow.
"""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rig_api_flow import bash, expect, poll, step  # noqa: E402

ENABLED = os.environ.get("RIG_HOSTILE_FLOW", "1") != "0"
# Seconds of each phase inside the guest. The trickle outlasts the daemon's deadline by far: a
# deadline per read instead of one for the whole call would keep a call that started with the
# phase going until the phase ends, well past PROBE_LIMIT_S.
PHASES = (("silent", 20), ("trickle", 90), ("huge", 30))
# The daemon's deadline for a `bash` call is its timeout plus a 60 s margin (src/api/actions.rs,
# AGENT_MARGIN); a call that takes longer than this hung.
PROBE_TIMEOUT_S, PROBE_LIMIT_S = 1, 61 + 15
# Memory the daemon may gain in the window: one 100 MB answer held whole would be more.
MAX_DAEMON_GROWTH_KB = 100 * 1024
BASELINE_S = 10

HOSTILE_AGENT = r'''
import socket, sys, threading, time
mode, seconds = sys.argv[1], float(sys.argv[2])
end = time.time() + seconds
s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((socket.VMADDR_CID_ANY, 1024))
s.listen(0 if mode == "silent" else 16)
print(mode, "listening", flush=True)
if mode == "silent":
    time.sleep(seconds)
    sys.exit(0)
CHUNK = b"[" + b"1," * (2**19 - 1) + b"1]"
served = [0]
def serve(c):
    try:
        c.settimeout(10)
        got = b""
        while b"\r\n\r\n" not in got and len(got) < 65536:
            part = c.recv(4096)
            if not part:
                return
            got += part
        c.settimeout(None)
        served[0] += 1
        if mode == "trickle":
            for b in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{}":
                if time.time() > end:
                    return
                c.send(bytes([b]))
                time.sleep(2)
            return
        chunked = served[0] % 2 == 1
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else "Content-Length: %d\r\n\r\n" % (100 * len(CHUNK))
        c.sendall(head.encode())
        for _ in range(100):
            if time.time() > end:
                return
            c.sendall((b"%x\r\n" % len(CHUNK)) + CHUNK + b"\r\n" if chunked else CHUNK)
    except OSError:
        pass
    finally:
        c.close()
s.settimeout(1)
while time.time() < end:
    try:
        c, _ = s.accept()
    except socket.timeout:
        continue
    threading.Thread(target=serve, args=(c,), daemon=True).start()
print(mode, "served", served[0], flush=True)
'''


def proc_state(ctl, reset_hwm=False):
    """{'daemon': {'VmRSS': kB, 'VmHWM': kB}, 'vmm': {id: kB}, 'logs': {(id, name): bytes}} from
    the rig's supervisor (ctl/proc-state); `reset_hwm` first resets the daemon's VmHWM to its RSS."""
    done = os.path.join(ctl, "proc-state.done")
    if os.path.exists(done):
        os.remove(done)
    with open(os.path.join(ctl, "proc-state"), "w") as f:
        f.write("reset-hwm\n" if reset_hwm else "")
    poll("the supervisor reports the processes' state", lambda: os.path.exists(done), 30, every_s=0.3)
    out = {"daemon": {}, "vmm": {}, "logs": {}}
    with open(os.path.join(ctl, "proc-state.out")) as f:
        for line in f:
            w = line.split()
            if len(w) == 3 and w[0] == "daemon":
                out["daemon"][w[1].rstrip(":")] = int(w[2])
            elif len(w) == 3 and w[0] == "vmm":
                out["vmm"][w[1]] = int(w[2])
            elif len(w) == 4 and w[0] == "log":
                out["logs"][(w[1], w[2])] = int(w[3])
    expect("VmRSS" in out["daemon"] and "VmHWM" in out["daemon"],
           f"the supervisor did not report the daemon's memory: {out}")
    return out


def percentile(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else float("nan")


class Sampler(threading.Thread):
    """Calls `call()` until stopped, keeping (start, elapsed s, outcome) of each call."""

    def __init__(self, call):
        super().__init__(daemon=True)
        self.call, self.samples, self.stop = call, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                outcome = self.call()
            except Exception as e:  # noqa: BLE001 - every failure is an outcome to report
                outcome = f"{type(e).__name__}: {e}"
            self.samples.append((t0, time.monotonic() - t0, outcome))


def neighbour_get(api, cid):
    def call():
        code, _ = api.call("GET", f"/api/computers/{cid}", timeout=30)
        return code
    return call


def latency_line(samples):
    ms = [e * 1000 for _, e, _ in samples]
    return f"p50 {percentile(ms, 50):.1f} ms, p99 {percentile(ms, 99):.1f} ms over {len(ms)}"


def check_hostile_guest(api, hostile, neighbour, ctl):
    if not ENABLED:
        step("hostile guest: left out (RIG_HOSTILE_FLOW=0)")
        return
    calm = Sampler(neighbour_get(api, neighbour))
    calm.start()
    time.sleep(BASELINE_S)
    calm.stop.set()
    calm.join()
    expect(all(o == 200 for _, _, o in calm.samples), f"GET of the neighbour failed unprovoked: {calm.samples[-3:]}")

    bash(api, hostile, "cat > /tmp/hostile-agent.py <<'EOF'\n" + HOSTILE_AGENT + "\nEOF")
    phases = "; ".join(f"python3 /tmp/hostile-agent.py {m} {s}" for m, s in PHASES)
    bash(api, hostile, "sudo setsid nohup sh -c 'sleep 2; systemctl stop deskd-agent; "
                       f"{phases}; systemctl start deskd-agent' > /tmp/hostile.log 2>&1 < /dev/null &")
    before = proc_state(ctl, reset_hwm=True)
    window_s = 2 + sum(s for _, s in PHASES)
    step(f"hostile guest: {hostile}'s agent replaced for {window_s} s ({', '.join(f'{m} {s} s' for m, s in PHASES)}); "
         f"daemon RSS {before['daemon']['VmRSS'] // 1024} MiB")

    def hostile_bash():
        code, body = api.call("POST", f"/api/computers/{hostile}/bash",
                              {"command": "true", "timeout": PROBE_TIMEOUT_S}, timeout=300)
        return code
    probes = Sampler(hostile_bash)
    loaded = Sampler(neighbour_get(api, neighbour))
    t_start = time.monotonic()
    probes.start()
    loaded.start()
    rss_max, neighbour_bash = before["daemon"]["VmRSS"], []
    try:
        while time.monotonic() - t_start < window_s:
            time.sleep(10)
            rss_max = max(rss_max, proc_state(ctl)["daemon"]["VmRSS"])
            if len(neighbour_bash) < 3 and time.monotonic() - t_start > 25 * (len(neighbour_bash) + 1):
                t0 = time.monotonic()
                expect(bash(api, neighbour, "echo neighbour") == "neighbour",
                       "the neighbour's bash failed beside the hostile guest")
                neighbour_bash.append(time.monotonic() - t0)
    finally:
        probes.stop.set()
        loaded.stop.set()
    after = proc_state(ctl)
    loaded.join()
    probes.join(timeout=PROBE_LIMIT_S + 30)
    expect(not probes.is_alive(), f"a bash call on the hostile computer did not end within {PROBE_LIMIT_S + 30} s")

    outcomes = {}
    for _, elapsed, outcome in probes.samples:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        expect(elapsed <= PROBE_LIMIT_S, f"a bash call on the hostile computer took {elapsed:.0f} s "
                                         f"(its deadline is {PROBE_LIMIT_S - 15} s): {outcome}")
    unexpected = {o: n for o, n in outcomes.items() if o not in (200, 502, 503, 504)}
    expect(not unexpected, f"the hostile guest's calls ended in {unexpected} (all: {outcomes})")
    expect(502 in outcomes and 504 in outcomes,
           f"the 100 MB answers (502) and the trickle (504) were not both met: {outcomes}")
    failed_gets = [s for s in loaded.samples if s[2] != 200]
    expect(not failed_gets, f"GET of the neighbour failed beside the hostile guest: {failed_gets[:3]}")
    peak = max(rss_max, after["daemon"]["VmHWM"])
    growth = peak - before["daemon"]["VmRSS"]
    expect(growth < MAX_DAEMON_GROWTH_KB, f"the daemon grew by {growth // 1024} MiB in the hostile window "
                                          f"(RSS {before['daemon']['VmRSS'] // 1024} MiB before, peak {peak // 1024} MiB)")
    logs = {k: v for k, v in after["logs"].items() if k[0] == hostile}
    step(f"hostile guest: its calls ended {outcomes} within {max(e for _, e, _ in probes.samples):.0f} s each; "
         f"daemon peak RSS {peak // 1024} MiB (+{growth // 1024} MiB); the neighbour's bash answered in "
         f"{', '.join(f'{t:.1f} s' for t in neighbour_bash)}; hostile VMM RSS "
         f"{after['vmm'].get(hostile, 0) // 1024} MiB; its logs {sorted(logs.items())}")
    step(f"hostile guest: GET of the neighbour without it {latency_line(calm.samples)}; "
         f"beside it {latency_line(loaded.samples)}")

    def agent_back():
        code, body = api.call("POST", f"/api/computers/{hostile}/bash", {"command": "echo back", "timeout": 5}, timeout=120)
        return code == 200 and isinstance(body, dict) and body.get("output", "").strip() == "back"
    t0 = time.monotonic()
    poll("the hostile computer's real agent answers again", agent_back, 240, every_s=3)
    log = " | ".join(bash(api, hostile, "cat /tmp/hostile.log").splitlines())
    step(f"hostile guest: its real agent answered again {time.monotonic() - t0:.0f} s after the window "
         f"(its script said: {log[:300]})")
