#!/usr/bin/env python3
"""The clipboard and the actions computer-use models emit, on a real desktop through deskd (issue 16),
in the style of rig_api_flow.py.

`check_actions(api, cid)` runs on a running desktop `cid`, in a terminal window it opens:

  clipboard: Unicode text set with POST /clipboard is pasted into the terminal (ctrl+shift+v) and
  read back with bash, byte for byte; triple_click on a line of the terminal selects it, the
  terminal copies the selection (ctrl+shift+c) and GET /clipboard returns that line;
  hold_key of shift while typing gives capitals; mouse_down on the window's title bar, move,
  mouse_up drags the window (its position changes by the move) and cursor_position follows; a
  region screenshot has the requested size, a scaled one under max_pixels says its scale.

The 1 MB clipboard and the pixel comparison of regions run against a real X server in
guest-agent/tests/{clipboard,model_actions}.rs; here the daemon's routes and a real guest are the
point. Run alone: `rig_actions_flow.py --info-dir DIR` creates a workspace and a computer, waits for it
and runs the checks. Exits 1 on the first mismatch.
"""

import base64
import os
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rig_api_flow import bash, expect, png_size, poll, run_flow, step, window_geometry  # noqa: E402


def act(api, cid, path, body=None, method="POST"):
    r = api.json(method, f"/api/computers/{cid}/{path}", body, timeout=300)
    expect(r.get("success", True) is not False, f"{path}: {r}")
    return r


def open_terminal(api, cid, title):
    bash(api, cid, f"setsid lxterminal --title={title} >/dev/null 2>&1 &")
    win = poll("the terminal window appears", lambda: window_geometry(api, cid, title), 300, every_s=2)
    # Focus it and give its shell time to print a prompt before typing.
    x, y, w, h = win
    act(api, cid, "click", {"x": x + w // 2, "y": y + h // 2})
    time.sleep(4)
    return win


def typed(api, cid, text):
    act(api, cid, "type", {"text": text})


def check_clipboard(api, cid, title):
    out = f"/tmp/pasted-{uuid.uuid4().hex[:6]}"
    text = "héllo wörld ✓ 你好 " + uuid.uuid4().hex[:8]
    act(api, cid, "clipboard", {"text": text})
    got = api.json("GET", f"/api/computers/{cid}/clipboard")
    expect(got.get("text") == text, f"GET /clipboard right after POST: {got}")
    # Pasted into cat's input, so the paste is taken as data, not as a command line.
    typed(api, cid, f"cat > {out}")
    act(api, cid, "key", {"key": "Enter"})
    # Until cat runs, the shell's line editor has the terminal in bracketed-paste mode, which
    # would wrap the paste in escapes: wait for cat (which turns it off as readline hands over).
    poll("cat runs in the terminal", lambda: bash(api, cid, f"pgrep -f '^cat$' >/dev/null && echo y || true") == "y", 30)
    time.sleep(1)
    act(api, cid, "key", {"key": "ctrl+shift+v"})
    # A paste is asynchronous (the terminal asks the selection's owner, the agent, for it): give
    # it time before the line ends, and end cat's input only once the line is in the file.
    time.sleep(3)
    act(api, cid, "key", {"key": "Enter"})
    pasted = poll("the pasted line reaches the file",
                  lambda: (lambda s: s if text in s else None)(bash(api, cid, f"cat {out} 2>/dev/null || true")),
                  60)
    act(api, cid, "key", {"key": "ctrl+d"})
    expect(pasted == text, f"pasted {pasted!r}, set {text!r}")
    step(f"clipboard: {text!r} set through the API was pasted into the terminal (ctrl+shift+v) byte for byte")

    # A line of its own in the terminal, selected by a triple click and copied by the terminal.
    marker = f"copy-me-{uuid.uuid4().hex[:8]}"
    typed(api, cid, "clear; echo " + marker)
    act(api, cid, "key", {"key": "Enter"})
    time.sleep(2)
    x, y, w, h = window_geometry(api, cid, title)
    # After `clear`, the echoed line is the first text line, below whatever bars the terminal
    # draws: triple-click down the window, a few pixels at a time, until the copy is that line.
    got, at = None, None
    for ty in range(y + 4, y + min(h, 160), 7):
        act(api, cid, "click", {"x": x + 40, "y": ty, "clicks": 3})
        act(api, cid, "key", {"key": "ctrl+shift+c"})
        text = api.json("GET", f"/api/computers/{cid}/clipboard").get("text", "")
        if marker in text:
            got, at = text, ty
            break
    expect(got is not None, f"no triple click in the terminal's top {min(h, 160)} px copied the line {marker!r}")
    expect(got.strip() == marker, f"the copied line is {got!r}, not {marker!r}")
    step(f"triple_click at y={at} selected the line {marker!r}; copied in the guest, GET /clipboard returns it")


def check_hold_key(api, cid):
    out = f"/tmp/held-{uuid.uuid4().hex[:6]}"
    typed(api, cid, "echo ")
    # shift held for 8 s while "abc" is typed, from another thread as a model would send them.
    holder = threading.Thread(target=lambda: act(api, cid, "hold_key", {"key": "shift", "duration": 8}))
    holder.start()
    time.sleep(2)
    typed(api, cid, "abc")
    holder.join()
    typed(api, cid, f" > {out}")
    act(api, cid, "key", {"key": "Enter"})
    got = poll("the typed line ran", lambda: bash(api, cid, f"cat {out} 2>/dev/null || true") or None, 60)
    expect(got == "ABC", f"with shift held, typing abc gave {got!r}")
    step("hold_key shift for 8 s while typing 'abc' gave 'ABC'")


def check_drag(api, cid, title):
    x, y, w, h = window_geometry(api, cid, title)
    # The title bar is just above the client window (openbox's decoration).
    tx, ty = x + w // 2, y - 8
    act(api, cid, "mouse_down", {"button": "left", "x": tx, "y": ty})
    for i in range(1, 5):
        act(api, cid, "move", {"x": tx + 30 * i, "y": ty + 20 * i})
    act(api, cid, "mouse_up", {"button": "left", "x": tx + 120, "y": ty + 80})
    pos = api.json("GET", f"/api/computers/{cid}/cursor_position")
    expect((pos.get("x"), pos.get("y")) == (tx + 120, ty + 80), f"cursor_position after the drag: {pos}")
    moved = poll("the window moves by the drag",
                 lambda: (lambda wnd: wnd if wnd and (wnd[0], wnd[1]) != (x, y) else None)(window_geometry(api, cid, title)),
                 30)
    dx, dy = moved[0] - x, moved[1] - y
    expect(abs(dx - 120) <= 4 and abs(dy - 80) <= 4, f"the window moved by ({dx}, {dy}), not (120, 80)")
    step(f"mouse_down on the title bar, move, mouse_up dragged the window by ({dx}, {dy}); "
         f"cursor_position ({pos['x']}, {pos['y']})")


def check_screenshots(api, cid):
    r = api.json("GET", f"/api/computers/{cid}/screenshot?x=100&y=50&width=320&height=200")
    size = png_size(base64.b64decode(r["image"]))
    expect(size == (320, 200), f"the region screenshot is {size}, not 320x200")
    r = api.json("GET", f"/api/computers/{cid}/screenshot?max_pixels=250000")
    size = png_size(base64.b64decode(r["image"]))
    expect(size is not None and size[0] * size[1] <= 250000, f"the scaled screenshot is {size}")
    expect(isinstance(r.get("scale"), (int, float)) and 0 < r["scale"] < 1, f"no scale in the answer: "
           f"{ {k: v for k, v in r.items() if k != 'image'} }")
    step(f"region screenshot 320x200; under max_pixels=250000 the screenshot is {size[0]}x{size[1]} at scale "
         f"{r['scale']:.3f}")


def check_actions(api, cid):
    t0 = time.monotonic()
    title = f"actions-{uuid.uuid4().hex[:6]}"
    open_terminal(api, cid, title)
    try:
        check_clipboard(api, cid, title)
        check_hold_key(api, cid)
        check_drag(api, cid, title)
        check_screenshots(api, cid)
    finally:
        bash(api, cid, f"pkill -f '^lxterminal --title={title}' || true")
    step(f"clipboard and actions: {time.monotonic() - t0:.1f} s")


def standalone(api, _read):
    if GIVEN:
        return check_actions(api, GIVEN)
    ws = api.json("POST", "/api/projects", {"name": f"actions-{uuid.uuid4().hex[:6]}"})["id"]
    cid = api.json("POST", "/api/computers", {"project_id": ws, "name": "actions-1"})["id"]
    poll("the computer runs", lambda: api.status_of(cid) in ("running", "error"), 900, every_s=2)
    expect(api.status_of(cid) == "running", f"the computer is {api.status_of(cid)}")
    check_actions(api, cid)


# --computer ID: run the checks on that running computer instead of a new one.
GIVEN = None
if "--computer" in sys.argv:
    i = sys.argv.index("--computer")
    GIVEN = sys.argv[i + 1]
    del sys.argv[i:i + 2]

if __name__ == "__main__":
    sys.exit(run_flow(__doc__, standalone, passed="all clipboard and action steps passed"))
