"""Small local package mirrors for template builds in the rig (issue 14): a flat apt repository
holding one .deb and a PEP 503 "simple" Python index holding one wheel, both made here from
nothing (dpkg-deb, zipfile) and served over HTTP on this host's loopback, which guests reach as
`http://web.test/` through the rig's internet stand-in (tests/rig/README.md).

The daemon's build steps are pointed at them by its config file, not by anything in deskd:
CONFIG is the `[build]` section tests/sdk-rig-e2e hands to tests/rig/serve (--config-add).
"""

import base64
import gzip
import hashlib
import http.server
import io
import os
import shlex
import subprocess
import tempfile
import threading
import time
import zipfile

WEB_PORT = int(os.environ.get("RIG_WEB_PORT", "18080"))
APT_PACKAGE = "rig-hello-deb"
APT_COMMAND = "/usr/bin/rig-hello-deb"
APT_SAYS = "hello from the apt mirror of the rig"
PIP_PACKAGE = "rig-hello"
PIP_MODULE = "rig_hello"
PIP_SAYS = "hello from the Python index of the rig"
CONFIG = ('[build]\napt_sources = ["deb [trusted=yes] http://web.test/apt ./"]\n'
          'pip_index_url = "http://web.test/pypi/simple/"\n')


def _deb(folder):
    """A .deb of APT_PACKAGE: one script that prints APT_SAYS."""
    root = os.path.join(folder, "pkg")
    os.makedirs(os.path.join(root, "DEBIAN"))
    os.makedirs(os.path.join(root, "usr", "bin"))
    with open(os.path.join(root, "DEBIAN", "control"), "w") as f:
        f.write(f"Package: {APT_PACKAGE}\nVersion: 1.0\nArchitecture: all\nMaintainer: deskd tests <tests@deskd.invalid>\n"
                "Description: a package of the rig's apt mirror\n")
    script = os.path.join(root, APT_COMMAND.lstrip("/"))
    with open(script, "w") as f:
        f.write(f"#!/bin/sh\necho {shlex.quote(APT_SAYS)}\n")
    os.chmod(script, 0o755)
    out = os.path.join(folder, f"{APT_PACKAGE}_1.0_all.deb")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", root, out],
                   check=True, stdout=subprocess.DEVNULL)
    return out


def _apt_repo(folder):
    """{path: bytes} of a flat repository (`deb [trusted=yes] URL ./`): the .deb, Packages(.gz), Release."""
    deb = _deb(folder)
    data = open(deb, "rb").read()
    name = os.path.basename(deb)
    control = subprocess.run(["dpkg-deb", "-f", deb], check=True, capture_output=True, text=True).stdout
    stanza = (control.rstrip("\n") + f"\nFilename: ./{name}\nSize: {len(data)}\n"
              f"MD5sum: {hashlib.md5(data).hexdigest()}\nSHA256: {hashlib.sha256(data).hexdigest()}\n\n").encode()
    packages_gz = gzip.compress(stanza)
    date = time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime())
    release = (f"Origin: deskd-rig\nLabel: deskd-rig\nSuite: rig\nCodename: rig\nDate: {date}\n"
               "Architectures: amd64 all\nDescription: the rig's apt mirror\nSHA256:\n"
               f" {hashlib.sha256(stanza).hexdigest()} {len(stanza)} Packages\n"
               f" {hashlib.sha256(packages_gz).hexdigest()} {len(packages_gz)} Packages.gz\n").encode()
    return {f"/apt/{name}": data, "/apt/Packages": stanza, "/apt/Packages.gz": packages_gz, "/apt/Release": release}


def _record_hash(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _wheel():
    """(file name, bytes) of a pure-Python wheel of PIP_PACKAGE (module PIP_MODULE, its GREETING)."""
    dist = f"{PIP_MODULE}-1.0.dist-info"
    files = {
        f"{PIP_MODULE}/__init__.py": f"GREETING = {PIP_SAYS!r}\n".encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {PIP_PACKAGE}\nVersion: 1.0\nSummary: the rig's Python index\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: deskd-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{p},{_record_hash(d)},{len(d)}\n" for p, d in files.items()) + f"{dist}/RECORD,,\n"
    files[f"{dist}/RECORD"] = record.encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p, d in files.items():
            z.writestr(p, d)
    return f"{PIP_MODULE}-1.0-py3-none-any.whl", buf.getvalue()


def _python_index():
    name, data = _wheel()
    link = f"../../files/{name}#sha256={hashlib.sha256(data).hexdigest()}"
    page = f'<!DOCTYPE html><html><body><a href="{link}">{name}</a></body></html>\n'.encode()
    top = f'<!DOCTYPE html><html><body><a href="{PIP_PACKAGE}/">{PIP_PACKAGE}</a></body></html>\n'.encode()
    return {"/pypi/simple/": top, f"/pypi/simple/{PIP_PACKAGE}/": page, f"/pypi/files/{name}": data}


class Mirror:
    """Both mirrors on 127.0.0.1:WEB_PORT until `stop()`; `requests` lists the paths asked for."""

    def __init__(self):
        with tempfile.TemporaryDirectory(prefix="deskd-mirror.") as folder:
            self.files = {**_apt_repo(folder), **_python_index()}
        self.requests = []
        files, requests = self.files, self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?", 1)[0]
                # A flat repository's files are asked for as DIR/./NAME.
                while "/./" in path:
                    path = path.replace("/./", "/")
                requests.append(path)
                body = files.get(path)
                if body is None and not path.endswith("/"):
                    body = files.get(path + "/")
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                # pip reads an index page only when it says it is HTML.
                kind = "text/html" if path.endswith("/") or path.startswith("/pypi/simple/") else "application/octet-stream"
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", WEB_PORT), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
