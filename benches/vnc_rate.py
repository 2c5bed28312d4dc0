"""RFB bytes/s meter for benches/vnc-host: vnc_rate.py HOST PORT SECONDS.

Connects (security type None), asks for the encodings noVNC asks for (Tight, ZRLE, CopyRect, Raw,
compression level 2, quality 6), lets the first full frame pass, then sends an incremental update
request every 16 ms (as a 60 Hz viewer would) for SECONDS and prints the bytes received per second.
Both servers get the same requests, so their figures compare."""
import select
import socket
import struct
import sys
import time

host, port, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection((host, port))
def rd(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c: raise SystemExit("closed")
        b += c
    return b
v = rd(12); s.sendall(b"RFB 003.008\n")
n = rd(1)[0]; types = rd(n)
assert 1 in types, types
s.sendall(b"\x01"); assert struct.unpack(">I", rd(4))[0] == 0
s.sendall(b"\x01"); init = rd(24); w, h = struct.unpack(">HH", init[:4]); rd(struct.unpack(">I", init[20:24])[0])
encs = [7, 16, 1, 0, -256 + 2, -32 + 6]
s.sendall(struct.pack(">BxH", 2, len(encs)) + b"".join(struct.pack(">i", e) for e in encs))
s.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, w, h))
# Let the first full frame arrive.
end = time.time() + 2
while time.time() < end:
    r, _, _ = select.select([s], [], [], 0.05)
    if r: s.recv(1 << 20)
    s.sendall(struct.pack(">BBHHHH", 3, 1, 0, 0, w, h))
total = 0; start = time.time(); nxt = start
while time.time() - start < duration:
    r, _, _ = select.select([s], [], [], 0.004)
    if r:
        c = s.recv(1 << 20)
        if not c: break
        total += len(c)
    if time.time() >= nxt:
        s.sendall(struct.pack(">BBHHHH", 3, 1, 0, 0, w, h)); nxt += 0.016
el = time.time() - start
print(f"{total/el:.0f}")
