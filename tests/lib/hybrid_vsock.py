#!/usr/bin/env python3
"""The hybrid-vsock client of the test scripts: reach a port inside a VM through its VMM's Unix socket.

deskd's VMM (like Firecracker's) exposes the guest's vsock as one Unix socket: connect to it, send
`CONNECT <port>\\n`, read `OK <host port>\\n`, and the stream is then the guest's port. The guest
agent (port 1024) speaks HTTP/1.1 over that stream. The daemon's own client is
`src/computers/agent_client.rs`; this is the one for Python scripts (tests/vmm/rig_tests.py,
benches/computer_rig.py) and, through its command line, shell ones (tests/image/boot-in-vm-host.sh):

    python3 tests/lib/hybrid_vsock.py SOCKET PORT METHOD TARGET [--data BODY] [--include] [-o FILE]

writes the answer's body (with --include: its status line and headers first, as curl -i does) to
FILE or stdout, and exits 0 for a 2xx answer, 22 for another answer (as curl --fail does), 1 when
the guest could not be reached. Standard library only: it runs on the host and inside the rig.
"""

import argparse
import http.client
import socket
import sys

# The guest agent's port (deskd_agent::protocol holds the contract; this is its Python reader's copy).
AGENT_PORT = 1024


class HandshakeError(OSError):
    """The VMM's socket answered the CONNECT with something other than `OK ...`."""


def connect(path, port, timeout=60.0):
    """A stream to the guest's `port`: returns (socket, the VMM's `OK ...` line without its newline)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(f"CONNECT {port}\n".encode())
        line = b""
        # Byte by byte: whatever follows the newline is the guest's, not ours to buffer.
        while not line.endswith(b"\n"):
            c = s.recv(1)
            if not c:
                raise HandshakeError(f"{path} closed during CONNECT {port} (after {line!r})")
            line += c
            if len(line) > 128:
                raise HandshakeError(f"{path} answered CONNECT {port} with a line too long: {line!r}")
        if not line.startswith(b"OK"):
            raise HandshakeError(f"{path} refused CONNECT {port}: {line!r}")
        return s, line.decode(errors="replace").strip()
    except BaseException:
        s.close()
        raise


class Connection(http.client.HTTPConnection):
    """HTTP/1.1 to a guest port over the hybrid-vsock socket; keep-alive works as over TCP."""

    def __init__(self, path, port=AGENT_PORT, timeout=60.0):
        super().__init__("deskd-agent", timeout=timeout)
        self.vsock_path = path
        self.vsock_port = port

    def connect(self):
        self.sock, _ = connect(self.vsock_path, self.vsock_port, self.timeout)


def request(path, method, target, body=None, headers=None, port=AGENT_PORT, timeout=60.0):
    """One HTTP request on a fresh connection: returns (status, reason, header list, body bytes)."""
    conn = Connection(path, port, timeout)
    try:
        hdrs = dict(headers or {})
        if body is not None and "Content-Type" not in hdrs:
            hdrs["Content-Type"] = "application/json"
        conn.request(method, target, body=body, headers=hdrs)
        r = conn.getresponse()
        return r.status, r.reason, r.getheaders(), r.read()
    finally:
        conn.close()


def main(argv=None):
    p = argparse.ArgumentParser(description="One HTTP request to a guest port over a VMM's hybrid-vsock socket.")
    p.add_argument("socket", help="the VMM's vsock Unix socket")
    p.add_argument("port", type=int, help="the guest's vsock port (the agent: 1024)")
    p.add_argument("method")
    p.add_argument("target", help="the request target, e.g. /health")
    p.add_argument("--data", help="request body (sent as application/json)")
    p.add_argument("--include", "-i", action="store_true", help="write the status line and headers first")
    p.add_argument("--output", "-o", help="write here instead of stdout")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds for each socket operation")
    a = p.parse_args(argv)
    try:
        status, reason, headers, body = request(
            a.socket, a.method, a.target, None if a.data is None else a.data.encode(), port=a.port,
            timeout=a.timeout)
    except (OSError, http.client.HTTPException) as e:
        print(f"hybrid_vsock: {a.method} {a.target} on {a.socket} port {a.port}: {e}", file=sys.stderr)
        return 1
    out = open(a.output, "wb") if a.output else sys.stdout.buffer
    with out:
        if a.include:
            out.write(f"HTTP/1.1 {status} {reason}\r\n".encode())
            for k, v in headers:
                out.write(f"{k}: {v}\r\n".encode())
            out.write(b"\r\n")
        out.write(body)
    return 0 if 200 <= status < 300 else 22


if __name__ == "__main__":
    sys.exit(main())
