#!/usr/bin/env python3
"""Real VNC viewers against a computer through deskd (issue 15): `orgo-vnc` (npm, bundled with React
by tests/viewer/build) and Debian's noVNC (`vnc.html`, the README's link form), in headless Chromium,
behind nginx configured with the README's own snippet (TLS with a certificate made here: orgo-vnc
connects to `wss://{hostname}/websockify` and nothing else).

`check_viewers(api, cid, proxy)` runs on a running desktop `cid` whose daemon's `public_url` is the
proxy's (`Proxy.url`), so that the API's `hostname` is what orgo-vnc needs unchanged:
  orgo-vnc with `hostname` and `vnc_password` from the API connects; its canvas matches the API's
  screenshot (at most 5% of the pixels differ by more than a small margin, and the desktop is not one
  flat colour); a click in the viewer on a terminal window puts the guest's pointer there
  (`cursor_position`), and a command typed in the viewer runs in that terminal; a wrong password is
  refused and never connects; noVNC's `vnc.html?host=&port=&encrypt=1&path=desktops/INSTANCE_ID/websockify`
  with the password connects and shows the same desktop.

Run alone: `viewer.py --info-dir DIR --proxy-port N [--computer ID]` (DIR as tests/rig/serve
--info-dir writes it; N the port of the daemon's `public_url`) runs the checks on computer ID, or
on a computer it creates and waits for. src/api/desktop_ws/vnc_tests.rs runs it against Xvnc on
this host; tests/sdk/rig_api_flow.py against a VM in the rig. Needs chromium, nginx,
openssl, novnc and node (tests/install-deps).
"""

import fcntl
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

here = os.path.dirname(os.path.abspath(__file__))
checkout = os.path.dirname(os.path.dirname(here))
sys.path.insert(0, os.path.join(checkout, "tests", "sdk"))
from rig_api_flow import Failed, bash, expect, poll, run_flow, step, window_geometry  # noqa: E402

NOVNC_DIR = "/usr/share/novnc"
# The browser's window: larger than the default desktop, so orgo-vnc's default scaling is 1:1 or up.
WINDOW = (1280, 900)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Chromium:
    """Headless Chromium over the DevTools protocol in pipe mode (`--remote-debugging-pipe`: JSON
    messages ended by NUL, commands on its fd 3, answers and events on its fd 4)."""

    def __init__(self):
        exe = shutil.which("chromium")
        expect(exe is not None, "chromium is not installed (apt-get install -y chromium)")
        self.profile = tempfile.mkdtemp(prefix="deskd-viewer-chromium.")
        # Above 4, so that placing them on 3 and 4 in the child overwrites neither.
        cmd_r, cmd_w = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in os.pipe())
        out_r, out_w = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in os.pipe())

        def on_3_and_4():
            os.dup2(cmd_r, 3)
            os.dup2(out_w, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--ignore-certificate-errors", "--remote-debugging-pipe",
             f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=on_3_and_4, close_fds=False)
        os.close(cmd_r)
        os.close(out_w)
        self.to = os.fdopen(cmd_w, "wb", buffering=0)
        self.frm = os.fdopen(out_r, "rb")
        self.next_id = 1
        self.session = None
        self.answers = {}
        self.console = []
        self.lock = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while True:
            chunk = self.frm.read1(65536)
            if not chunk:
                with self.lock:
                    self.answers["closed"] = True
                    self.lock.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self.lock:
                    if "id" in msg:
                        self.answers[msg["id"]] = msg
                        self.lock.notify_all()
                    elif msg.get("method") == "Runtime.consoleAPICalled":
                        args = msg["params"].get("args", [])
                        self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
                    elif msg.get("method") == "Runtime.exceptionThrown":
                        d = msg["params"].get("exceptionDetails", {})
                        self.console.append("exception: " + str(d.get("exception", {}).get("description", d.get("text"))))

    def call(self, method, params=None, in_page=True, timeout=60):
        with self.lock:
            i = self.next_id
            self.next_id += 1
        msg = {"id": i, "method": method, "params": params or {}}
        if in_page:
            msg["sessionId"] = self.session
        self.to.write(json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self.lock:
            while i not in self.answers:
                expect("closed" not in self.answers, "chromium closed its DevTools pipe")
                left = deadline - time.monotonic()
                expect(left > 0, f"chromium did not answer {method} within {timeout} s")
                self.lock.wait(left)
            answer = self.answers.pop(i)
        expect("error" not in answer, f"chromium: {method}: {answer.get('error')}")
        return answer.get("result", {})

    def open(self, url):
        """A new page at `url`, attached; the previous page is closed."""
        if self.session:
            self.call("Target.closeTarget", {"targetId": self.target}, in_page=False)
        self.target = self.call("Target.createTarget", {"url": "about:blank"}, in_page=False)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": self.target, "flatten": True},
                                 in_page=False)["sessionId"]
        self.console.clear()
        self.call("Runtime.enable")
        self.call("Page.navigate", {"url": url})

    def eval(self, expr, timeout=60):
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True},
                      timeout=timeout)
        if "exceptionDetails" in r:
            raise Failed(f"in the page: {expr[:80]}: {r['exceptionDetails'].get('exception', {}).get('description')}")
        return r.get("result", {}).get("value")

    def wait_for(self, what, expr, limit_s, done=bool):
        deadline = time.monotonic() + limit_s
        while True:
            v = self.eval(expr)
            if done(v):
                return v
            if time.monotonic() > deadline:
                raise Failed(f"{what}: not within {limit_s} s (last {v}); the page's console: {self.console[-10:]}")
            time.sleep(0.5)

    def click(self, x, y):
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left",
                                                   "clickCount": 1 if kind != "mouseMoved" else 0})

    def type(self, text):
        """Key presses as a keyboard makes them (keyDown with the character, keyUp), which is what
        noVNC turns into RFB key events; only characters a US keyboard types without Shift."""
        for ch in text:
            if ch == "\n":
                key, code, vk, txt = "Enter", "Enter", 13, "\r"
            elif ch == " ":
                key, code, vk, txt = " ", "Space", 32, " "
            elif ch.isascii() and ch.islower():
                key, code, vk, txt = ch, f"Key{ch.upper()}", ord(ch.upper()), ch
            elif ch.isdigit():
                key, code, vk, txt = ch, f"Digit{ch}", ord(ch), ch
            elif ch in "-./":
                key, code, vk, txt = ch, {"-": "Minus", ".": "Period", "/": "Slash"}[ch], \
                    {"-": 189, ".": 190, "/": 191}[ch], ch
            else:
                raise ValueError(f"cannot type {ch!r} without Shift")
            self.call("Input.dispatchKeyEvent", {"type": "keyDown", "key": key, "code": code, "text": txt,
                                                 "windowsVirtualKeyCode": vk})
            self.call("Input.dispatchKeyEvent", {"type": "keyUp", "key": key, "code": code,
                                                 "windowsVirtualKeyCode": vk})

    def close(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def readme_nginx_snippet():
    """The nginx configuration README.md shows for the live view, as written there."""
    with open(os.path.join(checkout, "README.md")) as f:
        text = f.read()
    m = re.search(r"```nginx\n(.*?)```", text, re.S)
    expect(m is not None, "README.md has no ```nginx block (the reverse-proxy snippet)")
    return m.group(1)


class Proxy:
    """nginx in front of the daemon's TCP listener, from README.md's snippet: its `listen`,
    certificate and `proxy_pass` lines filled in, nothing else changed."""

    def __init__(self, target, port=None):
        expect(shutil.which("nginx") is not None, "nginx is not installed (apt-get install -y nginx-light)")
        self.port = port or free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.dir = tempfile.mkdtemp(prefix="deskd-viewer-nginx.")
        d = self.dir
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem"],
                       check=True, capture_output=True)
        snippet = readme_nginx_snippet()
        for old, new in ((r"listen 443 ssl;", f"listen 127.0.0.1:{self.port} ssl;"),
                         (r"# ssl_certificate \.\.\.; ssl_certificate_key \.\.\.;",
                          f"ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;"),
                         (r"proxy_pass http://127\.0\.0\.1:8080;", f"proxy_pass http://{target};")):
            snippet, n = re.subn(old, new, snippet)
            expect(n == 1, f"README.md's nginx snippet no longer has the line {old!r} this test fills in")
        conf = (f"daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n"
                "events {}\nhttp {\n"
                f"    access_log {d}/access.log;\n"
                f"    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n"
                f"    fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n"
                f"{snippet}}}\n")
        with open(f"{d}/nginx.conf", "w") as f:
            f.write(conf)
        self.proc = subprocess.Popen(["nginx", "-p", d, "-c", f"{d}/nginx.conf", "-e", f"{d}/error.log"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise Failed(f"nginx did not start on {self.port}: {self.proc.stderr.read().decode()[-500:]} {self.error_log()}")

    def error_log(self):
        try:
            with open(f"{self.dir}/error.log") as f:
                return f.read()[-1500:]
        except OSError:
            return ""

    def close(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Pages:
    """The test's pages on loopback HTTP: `/viewer/` the built orgo-vnc page, `/novnc/` Debian's
    noVNC (ES modules do not load from file://)."""

    def __init__(self, bundle_dir):
        roots = {"/viewer/": bundle_dir, "/novnc/": NOVNC_DIR}

        class Handler(http.server.SimpleHTTPRequestHandler):
            def translate_path(self, path):
                path = urllib.parse.unquote(path.split("?", 1)[0])
                for prefix, root in roots.items():
                    if path.startswith(prefix) and ".." not in path:
                        return os.path.join(root, path[len(prefix):])
                return "/nonexistent"

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def bundle_dir():
    r = subprocess.run([os.path.join(here, "build")], stdout=subprocess.PIPE, text=True)
    expect(r.returncode == 0, "tests/viewer/build failed (see above)")
    return r.stdout.strip().splitlines()[-1]


# In the page: how the viewer's canvas compares with an image (the API's screenshot, as a data URL).
COMPARE = """(async (url) => {
  const c = [...document.querySelectorAll('canvas')].find(c => c.width > 100);
  if (!c) return {error: 'no canvas'};
  const img = new Image(); img.src = url; await img.decode();
  const w = c.width, h = c.height;
  if (img.width !== w || img.height !== h) return {canvas: [w, h], image: [img.width, img.height]};
  const a = c.getContext('2d').getImageData(0, 0, w, h).data;
  const t = document.createElement('canvas'); t.width = w; t.height = h;
  const tc = t.getContext('2d'); tc.drawImage(img, 0, 0);
  const b = tc.getImageData(0, 0, w, h).data;
  let differ = 0; const colours = new Map();
  for (let i = 0; i < a.length; i += 4) {
    const d = Math.max(Math.abs(a[i] - b[i]), Math.abs(a[i+1] - b[i+1]), Math.abs(a[i+2] - b[i+2]));
    if (d > 40) differ++;
    const k = (b[i] >> 4) << 8 | (b[i+1] >> 4) << 4 | (b[i+2] >> 4);
    colours.set(k, (colours.get(k) || 0) + 1);
  }
  const top = Math.max(...colours.values());
  return {canvas: [w, h], image: [img.width, img.height], differ: differ / (w * h),
          not_flat: 1 - top / (w * h)};
})"""

# In the page: where the viewer's canvas is and how much it is scaled.
CANVAS_BOX = """(() => {
  const c = [...document.querySelectorAll('canvas')].find(c => c.width > 100);
  if (!c) return null;
  const r = c.getBoundingClientRect();
  return {left: r.left, top: r.top, sx: r.width / c.width, sy: r.height / c.height, w: c.width, h: c.height};
})()"""


def screenshot_url(api, cid):
    shot = api.json("GET", f"/api/computers/{cid}/screenshot", timeout=300)
    return f"data:{shot.get('mime_type', 'image/png')};base64,{shot['image']}"


def matches_screenshot(browser, api, cid, what, limit_s=180):
    """Waits until the viewer's canvas shows what the API's screenshot shows (both taken again on
    each try: the desktop may still be drawing)."""
    last = {}

    def same():
        nonlocal last
        last = browser.eval(f"{COMPARE}({json.dumps(screenshot_url(api, cid))})", timeout=120)
        return last if last.get("differ") is not None and last["differ"] < 0.05 else None

    try:
        r = poll(f"{what}: the viewer's canvas matches the API's screenshot", same, limit_s, every_s=3)
    except Failed as e:
        raise Failed(f"{e}; last comparison {last}; console {browser.console[-10:]}") from None
    expect(r["not_flat"] > 0.01, f"{what}: the desktop is one flat colour ({r}); nothing to compare")
    return r


def check_orgo_vnc(browser, pages, api, cid, c, password, title, marker):
    bash(api, cid, f"rm -f {marker}; setsid lxterminal --title={title} >/dev/null 2>&1 &")
    win = poll("the terminal window appears", lambda: window_geometry(api, cid, title), 300, every_s=2)
    t0 = time.monotonic()
    q = urllib.parse.urlencode({"hostname": c["hostname"], "pw": password})
    browser.open(f"{pages.url}/viewer/orgo-vnc-page.html?{q}")
    state = browser.wait_for("orgo-vnc connects", "window.vnc && window.vnc.state", 120, lambda v: v and v != "connecting")
    expect(state == "connected", f"orgo-vnc did not connect to wss://{c['hostname']}/websockify: {state}, "
           f"{browser.eval('JSON.stringify(window.vnc)')}; console {browser.console[-10:]}")
    r = matches_screenshot(browser, api, cid, "orgo-vnc")
    step(f"orgo-vnc (hostname {c['hostname']}) connected through nginx and shows the desktop "
         f"{r['canvas'][0]}x{r['canvas'][1]} ({100 * r['differ']:.1f}% of pixels differ from the API's screenshot) "
         f"{time.monotonic() - t0:.1f} s after the page opened")

    box = browser.wait_for("the canvas has its place", CANVAS_BOX, 30)
    x, y, w, h = win
    gx, gy = x + w // 2, y + h // 2
    browser.click(box["left"] + (gx + 0.5) * box["sx"], box["top"] + (gy + 0.5) * box["sy"])

    def pointer_there():
        p = api.json("GET", f"/api/computers/{cid}/cursor_position")
        return p if abs(p.get("x", -99) - gx) <= 2 and abs(p.get("y", -99) - gy) <= 2 else None
    try:
        p = poll(f"the guest's pointer goes to ({gx}, {gy}) after the click in the viewer", pointer_there, 60)
    except Failed as e:
        raise Failed(f"{e}: it is at {api.json('GET', f'/api/computers/{cid}/cursor_position')}") from None
    step(f"a click in orgo-vnc at desktop ({gx}, {gy}) (scale {box['sx']:.2f}) put the guest's pointer at "
         f"({p['x']}, {p['y']})")

    # The click focused the terminal in the guest (and the canvas in the page).
    time.sleep(2)
    browser.type(f"touch {marker}\n")
    poll("the command typed in orgo-vnc ran in the terminal",
         lambda: bash(api, cid, f"test -e {marker} && echo yes || true") == "yes", 120, every_s=2)
    step(f"'touch {marker}' typed in orgo-vnc ran in the guest's terminal")

    q = urllib.parse.urlencode({"hostname": c["hostname"], "pw": "wrong-pw"})
    browser.open(f"{pages.url}/viewer/orgo-vnc-page.html?{q}")
    browser.wait_for("orgo-vnc with a wrong password gives up", "window.vnc && window.vnc.disconnects", 120,
                     lambda v: bool(v))
    seen = browser.eval("JSON.stringify(window.vnc)")
    expect('"state":"disconnected"' in seen, f"orgo-vnc with a wrong password: {seen}")
    step(f"orgo-vnc with a wrong password is refused ({seen[:120]})")


def check_novnc(browser, pages, api, cid, c, password, proxy):
    # The README's link form: host, port, encrypt and path; noVNC connects by itself with autoconnect.
    path = f"desktops/{c['instance_id']}/websockify"
    q = urllib.parse.urlencode({"host": "127.0.0.1", "port": proxy.port, "encrypt": 1, "path": path,
                                "password": password, "autoconnect": 1, "resize": "scale"})
    t0 = time.monotonic()
    browser.open(f"{pages.url}/novnc/vnc.html?{q}")
    status = "document.getElementById('noVNC_status') && document.getElementById('noVNC_status').textContent"
    browser.wait_for("noVNC connects", status, 120, lambda v: bool(v) and "onnected" in v and "isconnect" not in v)
    r = matches_screenshot(browser, api, cid, "noVNC")
    step(f"noVNC's vnc.html (path {path}) connected through nginx and shows the desktop "
         f"({100 * r['differ']:.1f}% of pixels differ) {time.monotonic() - t0:.1f} s after the page opened")


def check_viewers(api, cid, proxy):
    """orgo-vnc and noVNC on the running computer `cid`, through `proxy` (a `Proxy`)."""
    c = api.json("GET", f"/api/computers/{cid}")
    expect(c.get("hostname", "").startswith(proxy.url.split("://", 1)[1] + "/desktops/"),
           f"the computer's hostname {c.get('hostname')} is not under the proxy's {proxy.url}: "
           "is the daemon's public_url the proxy's?")
    password = api.json("GET", f"/api/computers/{cid}/vnc-password")["password"]
    pages = Pages(bundle_dir())
    browser = Chromium()
    # The terminal the checks type into stays open for noVNC's comparison: something to see.
    title = f"viewer-{uuid.uuid4().hex[:6]}"
    marker = f"/tmp/typed-in-viewer-{uuid.uuid4().hex[:6]}"
    try:
        check_orgo_vnc(browser, pages, api, cid, c, password, title, marker)
        check_novnc(browser, pages, api, cid, c, password, proxy)
    except Failed as e:
        raise Failed(f"{e}; nginx's error log: {proxy.error_log()[-600:]}") from None
    finally:
        browser.close()
        pages.close()
    bash(api, cid, f"pkill -f '^lxterminal --title={title}' || true; rm -f {marker}")


def take_option(name):
    """The value of `name VALUE` in argv, taken out (run_flow's parser knows only --info-dir)."""
    if name not in sys.argv:
        return None
    i = sys.argv.index(name)
    expect(i + 1 < len(sys.argv), f"{name} needs a value")
    value = sys.argv[i + 1]
    del sys.argv[i:i + 2]
    return value


def main():
    port = take_option("--proxy-port")
    given = take_option("--computer")

    def flow(api, read):
        target = urllib.parse.urlparse(read("url")).netloc
        proxy = Proxy(target, int(port) if port else None)
        try:
            cid = given
            if cid is None:
                ws = api.json("POST", "/api/projects", {"name": f"viewer-{uuid.uuid4().hex[:6]}"})["id"]
                cid = api.json("POST", "/api/computers", {"project_id": ws, "name": "viewer-1"})["id"]
                poll("the computer runs", lambda: api.status_of(cid) in ("running", "error"), 900, every_s=2)
            expect(api.status_of(cid) == "running", f"the computer is {api.status_of(cid)}")
            check_viewers(api, cid, proxy)
        finally:
            proxy.close()

    return run_flow(__doc__, flow, passed="all viewer steps passed")


if __name__ == "__main__":
    sys.exit(main())
