#!/usr/bin/env python3
"""Files in and out of a running computer through deskd (issue 16), in the style of rig_api_flow.py.

`check_files(api, ws, cid, other_cid=None)` runs on a running computer `cid` of workspace `ws`
(`other_cid`, a second running computer of the same workspace, adds the workspace-upload check). In
`make test` rig_template_flow.flow calls it on its two launches from the golden snapshot while both
run, so it costs no boot (`RIG_FILES_FLOW=0` leaves it out):

  a 5 MB random file uploaded with desktopId lands in /home/user/Desktop with the same SHA-256,
  owned by `user`; exported back (POST /api/files/export), its signed URL returns identical bytes
  without a key; a forged signature is refused (403); 11 MB over the default 10 MiB limit is 413
  naming the limit; `../../etc/shadow`, `/etc/passwd` and a Desktop symlink to /etc are refused on
  export (403); an upload to the workspace lands in both running computers; the file deleted, its
  URL answers 404.

Run alone: `rig_files_flow.py --info-dir DIR` creates a workspace and a computer (one cold boot),
waits for it and runs the checks (without the workspace upload). Prints each step with its time;
exits 1 on the first mismatch.
"""

import hashlib
import json
import os
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rig_api_flow import UnixHTTP, bash, expect, poll, run_flow, step  # noqa: E402


def multipart(fields, filename, data):
    """(content type, body) of a multipart/form-data upload: text `fields`, then the file."""
    boundary = f"deskd-{uuid.uuid4().hex}"
    out = bytearray()
    for name, value in fields.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                f"{value}\r\n").encode()
    out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    out += data
    out += f"\r\n--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", bytes(out)


def upload(api, fields, filename, data, timeout=900):
    """(HTTP status, JSON answer) of POST /api/files/upload."""
    content_type, body = multipart(fields, filename, data)
    conn = UnixHTTP(api.sock, timeout)
    try:
        conn.request("POST", "/api/files/upload", body=body,
                     headers={"Authorization": f"Bearer {api.key}", "Content-Type": content_type})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def no_key_get(api, url, timeout=900):
    """(HTTP status, body bytes) of a signed URL fetched without the API key."""
    path = url[url.index("/api/files/content/"):]
    conn = UnixHTTP(api.sock, timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def check_files(api, ws, cid, other_cid=None):
    # Into one computer: same bytes, owned by the desktop user.
    data = os.urandom(5 * 1000 * 1000)
    code, up = upload(api, {"desktopId": cid}, "rand-5mb.bin", data)
    expect(code == 200 and up.get("success") is True, f"upload answered {code}: {str(up)[:300]}")
    placed = [d for d in up["deliveries"] if d.get("desktop_id") == cid and "path" in d]
    expect(len(placed) == 1, f"the upload was not put in the computer: {up['deliveries']}")
    path = placed[0]["path"]
    expect(path.startswith("/home/user/Desktop/"), f"it landed at {path}")
    guest = bash(api, cid, f"sha256sum '{path}' | cut -d' ' -f1; stat -c %U '{path}'").split()
    expect(guest == [sha256(data), "user"], f"in the guest: {guest}, want [{sha256(data)}, user]")
    step(f"5 MB upload in {path}: same SHA-256, owned by user")

    # Exported back: its signed URL serves the same bytes without a key; forged ones are refused.
    name = placed[0]["name"]
    ex = api.json("POST", "/api/files/export", {"desktopId": cid, "path": f"Desktop/{name}"})
    expect(ex["file"]["size_bytes"] == len(data) and ex["file"]["source"] == "export", f"export: {ex['file']}")
    code, got = no_key_get(api, ex["url"])
    expect(code == 200 and sha256(got) == sha256(data), f"the signed URL answered {code}, {len(got)} bytes")
    sig = ex["url"].split("signature=")[1]
    forged = ex["url"].replace(sig, ("1" if sig[0] == "0" else "0") + sig[1:])
    code, _ = no_key_get(api, forged)
    expect(code == 403, f"a forged signature answered {code}")
    step("exported back: the signed URL returns identical bytes without a key; a forged one is 403")

    # Over the limit (the rig's daemon keeps the default 10 MiB).
    code, big = upload(api, {"desktopId": cid}, "too-big.bin", os.urandom(11 * 1000 * 1000))
    expect(code == 413 and "limits.max_upload_bytes" in big.get("error", ""), f"11 MB answered {code}: {big}")
    step(f"11 MB upload: 413 ({big['error']})")

    # Export stays below /home/user.
    bash(api, cid, "ln -sfn /etc /home/user/Desktop/etc-link")
    for bad in ("../../etc/shadow", "/etc/passwd", "Desktop/etc-link/passwd", "~/Desktop/etc-link/shadow"):
        code, r = api.call("POST", "/api/files/export", {"desktopId": cid, "path": bad})
        expect(code == 403, f"export of {bad!r} answered {code}: {r}")
    step("exports of ../../etc/shadow, /etc/passwd and through a Desktop symlink to /etc: 403")

    if other_cid:
        small = os.urandom(100 * 1000)
        code, up2 = upload(api, {"projectId": ws}, "to-all.bin", small)
        expect(code == 200, f"workspace upload answered {code}: {up2}")
        for c in (cid, other_cid):
            d = [x for x in up2["deliveries"] if x.get("desktop_id") == c and "path" in x]
            expect(len(d) == 1, f"the workspace upload did not reach {c}: {up2['deliveries']}")
            h = bash(api, c, f"sha256sum '{d[0]['path']}' | cut -d' ' -f1")
            expect(h == sha256(small), f"{c} holds other bytes")
        step("an upload to the workspace landed in both running computers")

    # Deleted: the URL answers 404.
    r = api.json("DELETE", f"/api/files/delete?id={ex['file']['id']}")
    expect(r.get("success") is True, f"delete answered {r}")
    code, _ = no_key_get(api, ex["url"])
    expect(code == 404, f"the deleted file's URL answered {code}")
    step("deleted: its signed URL answers 404")


def standalone(api, _read):
    ws = api.json("POST", "/api/projects", {"name": f"files-{uuid.uuid4().hex[:6]}"})["id"]
    cid = api.json("POST", "/api/computers", {"project_id": ws, "name": "files-1"})["id"]
    poll("the computer runs", lambda: api.status_of(cid) in ("running", "error"), 900, every_s=2)
    expect(api.status_of(cid) == "running", f"the computer is {api.status_of(cid)}")
    check_files(api, ws, cid)


def main():
    return run_flow(__doc__, standalone, passed="all file steps passed")


if __name__ == "__main__":
    sys.exit(main())
