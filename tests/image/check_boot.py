#!/usr/bin/env python3
"""Judge one boot of a deskd desktop image from what the guest and the agent left behind.

    check_boot.py RESULT_DIR --width W --height H --hostname NAME --image-bytes N
                  [--agent-health FILE] [--agent-screenshot FILE]

RESULT_DIR holds the guest self-test's files (facts.txt, xdpyinfo.txt, windows.txt, screen.xwd; see
images/rootfs/usr/local/lib/deskd/selftest). Prints one line per check and a closing
"N passed, N failed" line; exits non-zero when any check failed. Writes screen.png beside the
screenshot so a person can look at it. Standard library only: it runs on the host and in the rig.
"""

import argparse
import json
import os
import re
import struct
import sys
import zlib

PANEL_BG = (0x2E, 0x34, 0x40)  # tint2rc background in images/rootfs/etc/skel/.config/tint2/tint2rc
PANEL_HEIGHT = 32


class Screenshot:
    """An RGB picture: width, height and rows of (r, g, b) tuples."""

    def __init__(self, width, height, rows):
        self.width = width
        self.height = height
        self.rows = rows

    def colours(self, y0=0, y1=None):
        counts = {}
        for row in self.rows[y0:y1]:
            for px in row:
                counts[px] = counts.get(px, 0) + 1
        return counts


def _mask_shift(mask):
    shift = 0
    while mask and not mask & 1:
        mask >>= 1
        shift += 1
    bits = bin(mask).count("1")
    return shift, bits


def read_xwd(path):
    """Decode an xwd dump of a TrueColor ZPixmap window (what `xwd -root` gives on Xvfb)."""
    data = open(path, "rb").read()
    if len(data) < 100:
        raise ValueError(f"{path}: {len(data)} bytes is too short for an xwd header")
    fields = struct.unpack(">25I", data[:100])
    (header_size, version, fmt, _depth, width, height, _xoff, byte_order, _unit, _bit_order,
     _pad, bpp, bytes_per_line, _visual, rmask, gmask, bmask, _bits_rgb, _cmap_entries, ncolors,
     *_rest) = fields
    if version != 7 or fmt != 2:
        raise ValueError(f"{path}: xwd version {version} format {fmt}, expected 7 and ZPixmap (2)")
    if bpp not in (16, 24, 32):
        raise ValueError(f"{path}: {bpp} bits per pixel is not supported")
    offset = header_size + ncolors * 12
    endian = "<" if byte_order == 0 else ">"
    step = bpp // 8
    shifts = [_mask_shift(m) for m in (rmask, gmask, bmask)]
    rows = []
    for y in range(height):
        line = data[offset + y * bytes_per_line: offset + y * bytes_per_line + width * step]
        if len(line) < width * step:
            raise ValueError(f"{path}: truncated at row {y}")
        row = []
        for x in range(width):
            chunk = line[x * step:(x + 1) * step]
            if step == 2:
                value = struct.unpack(endian + "H", chunk)[0]
            elif step == 3:
                value = int.from_bytes(chunk, "little" if endian == "<" else "big")
            else:
                value = struct.unpack(endian + "I", chunk)[0]
            px = []
            for mask, (shift, bits) in zip((rmask, gmask, bmask), shifts):
                v = (value & mask) >> shift
                px.append(v * 255 // ((1 << bits) - 1) if bits else 0)
            row.append(tuple(px))
        rows.append(row)
    return Screenshot(width, height, rows)


def read_png(path):
    """Decode an 8-bit RGB or RGBA, non-interlaced PNG (what deskd-agent sends)."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG")
    pos, idat, width = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _c, _f, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or colour not in (2, 6) or interlace:
                raise ValueError(f"{path}: PNG depth {depth} colour type {colour} interlace {interlace} not supported here")
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    if width is None:
        raise ValueError(f"{path}: no IHDR")
    raw = zlib.decompress(idat)
    stride = width * channels
    rows, prev = [], bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        rows.append([tuple(line[x * channels:x * channels + 3]) for x in range(width)])
        prev = line
    return Screenshot(width, height, rows)


def write_png(shot, path):
    raw = b"".join(b"\x00" + bytes(v for px in row for v in px) for row in shot.rows)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", shot.width, shot.height, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 6)))
        f.write(chunk(b"IEND", b""))


def desktop_checks(shot, width, height, source):
    """The picture is the requested size, not one colour, and has the panel along the bottom."""
    results = []
    results.append((f"{source}: {shot.width}x{shot.height} is the requested {width}x{height}",
                    (shot.width, shot.height) == (width, height)))
    whole = shot.colours()
    results.append((f"{source}: not a uniform picture ({len(whole)} distinct colours, need >= 8)",
                    len(whole) >= 8))
    if shot.height > PANEL_HEIGHT:
        panel = shot.colours(shot.height - PANEL_HEIGHT, None)
        panel_px = sum(panel.values())
        bg_share = panel.get(PANEL_BG, 0) / panel_px
        results.append((f"{source}: bottom {PANEL_HEIGHT} rows are the panel "
                        f"({bg_share:.0%} panel colour, need >= 50%; {len(panel)} colours, need >= 3)",
                        bg_share >= 0.5 and len(panel) >= 3))
        above = shot.colours(0, shot.height - PANEL_HEIGHT)
        above_share = above.get(PANEL_BG, 0) / sum(above.values())
        results.append((f"{source}: the panel colour is not the whole desktop ({above_share:.0%} above the panel)",
                        above_share < 0.5))
    return results


def parse_facts(path):
    facts = {}
    with open(path) as f:
        for line in f:
            key, sep, value = line.rstrip("\n").partition("=")
            if sep:
                facts[key] = value.strip()
    return facts


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result_dir")
    ap.add_argument("--width", type=int, required=True)
    ap.add_argument("--height", type=int, required=True)
    ap.add_argument("--hostname", required=True)
    ap.add_argument("--image-bytes", type=int, required=True)
    ap.add_argument("--agent-health")
    ap.add_argument("--agent-screenshot")
    args = ap.parse_args()
    d = args.result_dir
    results = []

    def check(name, ok):
        results.append((name, bool(ok)))

    facts_path = os.path.join(d, "facts.txt")
    facts = parse_facts(facts_path) if os.path.exists(facts_path) else {}
    check("guest self-test wrote its facts", facts)
    if facts:
        check(f"hostname from the kernel command line ({facts.get('hostname')!r})",
              facts.get("hostname") == args.hostname)
        check(f"the guest booted once, no reboot on the way (boots in the journal: {facts.get('boots')})",
              facts.get("boots") == "1")
        check(f"the display is Xvnc (VNC-EXTENSION in xdpyinfo: {facts.get('x_vnc_extension')})",
              facts.get("x_vnc_extension") == "1")
        check(f"RFB greets on the guest's Unix socket ({facts.get('rfb_greeting')!r})",
              facts.get("rfb_greeting") == "RFB 003.008")
        check(f"no RFB TCP port is open ({facts.get('rfb_tcp_listening')})",
              facts.get("rfb_tcp_listening") == "0")
        for unit in ("deskd-display", "deskd-session", "deskd-agent", "deskd-hostname"):
            check(f"{unit}.service is active ({facts.get('unit_' + unit)})",
                  facts.get("unit_" + unit) == "active")
        for sock in ("deskd-restore", "deskd-growfs"):
            check(f"{sock}.socket listens ({facts.get('socket_' + sock)})",
                  facts.get("socket_" + sock) == "active")
        check(f"no failed units ({facts.get('failed_units') or 'none'})", not facts.get("failed_units"))
        check(f"PulseAudio default sink is the null sink 'speaker' ({facts.get('default_sink')})",
              facts.get("default_sink") == "speaker")
        check(f"nothing listens on port 22 ({facts.get('sshd_listening')})", facts.get("sshd_listening") == "0")
        root, disk = int(facts.get("root_bytes") or 0), int(facts.get("disk_bytes") or 0)
        check(f"root fs grew to the disk ({root} bytes on a {disk}-byte disk, image {args.image_bytes})",
              root > args.image_bytes and root >= disk * 0.9)
        check(f"user may sudo without a password ({facts.get('sudo_nopasswd')})",
              facts.get("sudo_nopasswd", "").endswith("yes"))
        check(f"home has Desktop and Downloads ({facts.get('home_dirs')})",
              facts.get("home_dirs", "").split() == ["Desktop", "Downloads"])
        loaded = facts.get("modules_early", "").split()
        check(f"virtio modules loaded ({' '.join(loaded)})",
              {"virtio_mmio", "virtio_blk", "vmw_vsock_virtio_transport", "virtio_rng"} <= set(loaded))

    xdpy_path = os.path.join(d, "xdpyinfo.txt")
    if os.path.exists(xdpy_path):
        m = re.search(r"dimensions:\s+(\d+)x(\d+) pixels", open(xdpy_path).read())
        depth = re.search(r"depth of root window:\s+(\d+)", open(xdpy_path).read())
        got = f"{m.group(1)}x{m.group(2)}" if m else "?"
        check(f"Xvfb runs at {got} (depth {depth.group(1) if depth else '?'}), requested {args.width}x{args.height}",
              m and (int(m.group(1)), int(m.group(2))) == (args.width, args.height))
    else:
        check("xdpyinfo output present", False)

    windows_path = os.path.join(d, "windows.txt")
    windows = open(windows_path).read() if os.path.exists(windows_path) else ""
    check("the panel (tint2) and the desktop (pcmanfm) have windows",
          '"tint2"' in windows and '"pcmanfm"' in windows)

    xwd_path = os.path.join(d, "screen.xwd")
    try:
        shot = read_xwd(xwd_path)
        write_png(shot, os.path.join(d, "screen.png"))
        results.extend(desktop_checks(shot, args.width, args.height, "guest screenshot"))
    except (OSError, ValueError) as e:
        check(f"guest screenshot readable ({e})", False)

    if args.agent_health:
        body = open(args.agent_health, errors="replace").read() if os.path.exists(args.agent_health) else ""
        first = body.splitlines()[0] if body else "no answer"
        check(f"agent answers GET /health over vsock ({first})", re.match(r"HTTP/1\.[01] 200", body))
        payload = re.split(r"\r?\n\r?\n", body, maxsplit=1)[-1]
        try:
            health = json.loads(payload)
        except ValueError:
            health = {}
        check(f"agent sees the display at the requested size ({payload.strip()[:120]})",
              health.get("display") is True
              and (health.get("width"), health.get("height")) == (args.width, args.height))
        parts = health.get("desktop") or {}
        missing = [p for p in ("x_server", "window_manager", "panel", "desktop") if parts.get(p) is not True]
        check(f"agent reports the desktop ready (parts not up: {', '.join(missing) or 'none'})",
              health.get("ready") is True and not missing)
    if args.agent_screenshot:
        try:
            shot = read_png(args.agent_screenshot)
            results.extend(desktop_checks(shot, args.width, args.height, "agent /screenshot"))
        except (OSError, ValueError) as e:
            check(f"agent /screenshot is a PNG ({e})", False)

    passed = sum(1 for _, ok in results if ok)
    for name, ok in results:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    print(f"boot: {passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
