"""Computer benchmark, run inside the rig by benches/computer-rig (next to a `deskd serve`).

Prints: create-to-running time of one computer, then screenshot, click and bash round trips
through the daemon (HTTP over its Unix socket, key auth, forwarding over vsock) next to the same
calls made straight to the guest agent over the VM's vsock socket in the same run, and the
daemon's overhead (difference of medians). Every call opens what the daemon opens per call: a
fresh vsock connection; the daemon side reuses one keep-alive HTTP connection, as clients do.
"""

import http.client
import json
import os
import socket
import statistics
import sys
import time

SOCK = os.environ.get("DESKD_SOCKET", "/run/deskd/deskd.sock")
DATA = os.environ.get("DESKD_DATA", "/var/lib/deskd")
KEY = open(os.path.join(DATA, "initial-api-key")).read().strip()
N = int(os.environ.get("BENCH_N", "10"))


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path, timeout=900):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


daemon = UnixHTTP(SOCK)


def api(method, path, body=None):
    headers = {"Authorization": f"Bearer {KEY}"}
    data = None
    if body is not None:
        data = json.dumps(body)
        headers["Content-Type"] = "application/json"
    daemon.request(method, path, body=data, headers=headers)
    r = daemon.getresponse()
    raw = r.read()
    if r.status >= 300:
        sys.exit(f"bench: {method} {path} -> {r.status} {raw[:300]!r}")
    return json.loads(raw)


def agent(vsock, method, path, body=None):
    """One call straight to the agent: connect, CONNECT 1024, HTTP/1.1."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(300)
    s.connect(vsock)
    s.sendall(b"CONNECT 1024\n")
    line = b""
    while not line.endswith(b"\n"):
        b = s.recv(1)
        if not b:
            sys.exit("bench: the agent's vsock port closed")
        line += b
    conn = http.client.HTTPConnection("deskd-agent")
    conn.sock = s
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    r = conn.getresponse()
    raw = r.read()
    conn.close()
    if r.status >= 300:
        sys.exit(f"bench: agent {method} {path} -> {r.status} {raw[:300]!r}")
    return raw


def timed(fn, n=N):
    fn()  # warm-up
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


ws = api("POST", "/api/workspaces", {"name": f"bench-{os.getpid()}"})
t0 = time.monotonic()
c = api("POST", "/api/computers", {"workspace_id": ws["id"], "name": "bench"})
cid = c["id"]
while True:
    s = api("GET", f"/api/computers/{cid}")["status"]
    if s == "running":
        break
    if s == "error":
        sys.exit(f"bench: computer failed: {api('GET', f'/api/computers/{cid}')}")
    if time.monotonic() - t0 > 1500:
        sys.exit("bench: not running after 1500 s")
    time.sleep(1)
create_to_running = time.monotonic() - t0
vsock = os.path.join(DATA, "computers", cid, "vsock.sock")

cases = [
    ("screenshot (PNG 1280x720)",
     lambda: api("GET", f"/api/computers/{cid}/screenshot"),
     lambda: agent(vsock, "GET", "/screenshot")),
    ("click",
     lambda: api("POST", f"/api/computers/{cid}/click", {"x": 5, "y": 5}),
     lambda: agent(vsock, "POST", "/click", {"x": 5, "y": 5})),
    ("bash 'true'",
     lambda: api("POST", f"/api/computers/{cid}/bash", {"command": "true"}),
     lambda: agent(vsock, "POST", "/bash", {"command": "true"})),
]
print(f"bench: create-to-running (POST /computers until status running): {create_to_running:.1f} s")
print(f"bench: {N} calls each, milliseconds, median / mean / max; same VM, same run")
print(f"{'call':28} {'through deskd':>28} {'straight to the agent':>28} {'deskd overhead (median)':>24}")
for name, via_daemon, direct in cases:
    d = timed(via_daemon)
    a = timed(direct)
    fmt = lambda xs: f"{statistics.median(xs):8.1f} /{statistics.mean(xs):8.1f} /{max(xs):8.1f}"
    print(f"{name:28} {fmt(d):>28} {fmt(a):>28} {statistics.median(d) - statistics.median(a):20.1f} ms")
api("DELETE", f"/api/computers/{cid}")
print("bench: done")
