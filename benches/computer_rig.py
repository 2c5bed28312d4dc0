"""Computer benchmark, run inside the rig by benches/computer-rig (next to a `deskd serve`).

Prints: create-to-running time of one computer, then screenshot, click and bash round trips
through the daemon (HTTP over its Unix socket, key auth, forwarding over vsock) next to the same
calls made straight to the guest agent over the VM's vsock socket in the same run, and the
daemon's overhead (difference of medians). Every call opens what the daemon opens per call: a
fresh vsock connection; the daemon side reuses one keep-alive HTTP connection, as clients do.
"""

import base64
import http.client
import json
import os
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "lib"))
import hybrid_vsock  # noqa: E402  (the scripts' one hybrid-vsock client)

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
    """One call straight to the agent on a fresh connection: connect, CONNECT 1024, HTTP/1.1."""
    status, _, _, raw = hybrid_vsock.request(
        vsock, method, path, body=None if body is None else json.dumps(body), timeout=300)
    if status >= 300:
        sys.exit(f"bench: agent {method} {path} -> {status} {raw[:300]!r}")
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


def ws_open(path):
    """A WebSocket over the daemon's Unix socket (stdlib only); returns the socket after the 101."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(300)
    s.connect(SOCK)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(1)
        if not b:
            sys.exit(f"bench: no WebSocket answer for {path}")
        head += b
    if b" 101 " not in head.split(b"\r\n")[0]:
        sys.exit(f"bench: WebSocket {path} answered {head[:200]!r}")
    return s


def ws_send(s, text):
    data = text.encode()
    mask = os.urandom(4)
    n = len(data)
    header = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    s.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        b = s.recv(n - len(out))
        if not b:
            raise EOFError
        out += b
    return out


def ws_recv(s):
    """(opcode, payload) of the next frame."""
    b0, b1 = recv_exact(s, 2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(recv_exact(s, 2), "big")
    elif n == 127:
        n = int.from_bytes(recv_exact(s, 8), "big")
    return b0 & 0x0F, recv_exact(s, n)


def ws_close_code(path):
    s = ws_open(path)
    op, payload = ws_recv(s)
    s.close()
    return int.from_bytes(payload[:2], "big") if op == 8 else None


token = api("GET", f"/api/computers/{cid}/vnc-password")["password"]
inst = api("GET", f"/api/computers/{cid}")["instance_id"]
assert ws_close_code(f"/desktops/{cid}/ws/terminal?token=wrong") == 4401
assert ws_close_code(f"/desktops/00000000/ws/terminal?token={token}") == 4404
s = ws_open(f"/desktops/{inst}/ws/terminal?token={token}&cols=80&rows=24")
ws_send(s, json.dumps({"type": "input", "data": "echo ws-$((40+2))\n"}))
seen, deadline = "", time.monotonic() + 300
while "ws-42" not in seen and time.monotonic() < deadline:
    op, payload = ws_recv(s)
    if op == 1:
        msg = json.loads(payload)
        seen += msg.get("data", "")
assert "ws-42" in seen, seen[-300:]
s.close()
s = ws_open(f"/desktops/{cid}/ws/events?token={token}")
ws_send(s, json.dumps({"type": "subscribe", "event_types": ["window_open"]}))
op, payload = ws_recv(s)
assert json.loads(payload)["type"] == "subscribed", payload
s.close()
print("bench: WebSockets: terminal relays a shell (echo ws-42), events subscribe; bad token 4401, unknown computer 4404")
api("DELETE", f"/api/computers/{cid}")
print("bench: done")
