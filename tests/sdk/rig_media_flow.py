#!/usr/bin/env python3
"""The audio stream and RTMP streaming of a running computer through deskd (issue 15), in the style
of rig_api_flow.py, which runs both on its first computer (`check_audio`, then `check_rig_rtmp`).

`check_audio(api, cid)` on a running computer `cid`:

  `audio_stream_start`/`audio_stream_stop` subscribed on /ws/events; a 440 Hz tone played in the
  guest (a WAV made by the guest's python3, `paplay` into the default sink `speaker`) is captured
  from /desktops/{instance}/ws/audio at 24 kHz mono for 2 s: `started`, frames of 960 bytes, the
  spectral peak within 5 Hz of 440; `ping` -> `pong`, `stop` -> close 1000, both events arrive;
  with the tone stopped, 1 s of silence; a bad sample_rate is an error then 4500.

`check_rig_rtmp(api, cid)`: a real RTMP receiver on this host (`ffmpeg -listen 1 -f flv -i
rtmp://127.0.0.1:$RIG_RTMP_PORT/live/KEY -c copy OUT.flv`, default port 18082), which the guest
reaches as `rtmp://rtmp.test:1935/live` through the rig's internet stand-in (tests/rig/README.md);
the agent pushes to the connection's URL + "/" + stream key. The stream calls go through the
official SDK's `Computer(computer_id=cid)` (`start_stream`, `stream_status`, `stop_stream`), run in
the SDK's Python (DESKD_SDK_PYTHON, DESKD_BASE, DESKD_KEY, as tests/sdk-rig-e2e sets them), the
connections through the API. `check_rtmp` makes the checks:

  a stream connection saved (key masked in the answer and the list); start_stream -> streaming
  with a pid, a second start refused (409, one stream per computer); stream_status says streaming
  with that pid until the receiver has RECEIVED_S s of the stream (at most STREAM_LIMIT_S);
  stop_stream -> idle, and the receiver ends by itself; ffprobe of what it wrote: >= 5 s of
  1280x720 H.264 with an AAC track; a connection to a port nobody listens on ends as `terminated`
  with the encoder's reason; the key is in no answer (API's or SDK's, the console log's included),
  not in the guest's journal (which has the agent's log of both streams) and not in the serve log
  (RIG_SERVE_LOG: deskd's log in the rig, which has the calls' access lines).

Measured in the rig (2026-12-02, two runs): the RTMP step took 59 s and 85 s; 17 s and 22 s of
stream arrived (the receiver writes nothing until it has probed a few seconds of it, so it has
more than RECEIVED_S when first asked); x264 in the rig's guest manages about 2 frames a second
at 1280x720 (42 frames over 22 s), so the video is sparse but spans the whole stream.

Run alone: `rig_media_flow.py --info-dir DIR [--rtmp]` creates a computer, waits for it and runs
the checks (RTMP only with --rtmp). Exits 1 on the first mismatch.
"""

import base64
import json
import math
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rig_api_flow import Failed, bash, expect, poll, run_flow, step  # noqa: E402

KEY = "rig-Sekr3t_key.15"
# The rig's guests are 50-100x slower than hardware: patient reads.
WS_TIMEOUT_S = 120
# Without a receiver to ask, the stream runs this long.
STREAM_S = 40
# The stream is stopped once the receiver has this many seconds of it (the file must have >= 5),
# and fails if that takes longer than STREAM_LIMIT_S: x264 in the rig's guest may not keep up.
RECEIVED_S = 7
STREAM_LIMIT_S = 300
# The rig's internet stand-in (tests/rig/README.md): a guest's rtmp.test:1935 is this host's
# 127.0.0.1:$RIG_RTMP_PORT.
RTMP_PORT = int(os.environ.get("RIG_RTMP_PORT", "18082"))
RIG_RTMP_URL = "rtmp://rtmp.test:1935/live"


class WebSocket:
    """A minimal RFC 6455 client over the daemon's Unix socket (the standard library has none)."""

    def __init__(self, sock_path, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(WS_TIMEOUT_S)
        self.s.connect(sock_path)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall((f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.s.recv(1)
            expect(chunk, f"{path}: the connection closed during the hand-shake")
            head += chunk
        expect(head.startswith(b"HTTP/1.1 101"), f"{path}: no upgrade: {head[:200]!r}")

    def _exact(self, n):
        out = b""
        while len(out) < n:
            chunk = self.s.recv(n - len(out))
            expect(chunk, "the WebSocket closed mid-frame")
            out += chunk
        return out

    def recv(self):
        """('text', str) | ('binary', bytes) | ('close', code)."""
        data, kind = b"", None
        while True:
            b0, b1 = self._exact(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            payload = self._exact(n)
            if opcode == 8:
                return ("close", struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005)
            if opcode in (9, 10):
                continue
            if opcode in (1, 2):
                kind = "text" if opcode == 1 else "binary"
            data += payload
            if b0 & 0x80:
                return (kind, data.decode() if kind == "text" else data)

    def send_json(self, value):
        payload = json.dumps(value).encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    def next_json(self):
        """The next text frame as JSON, skipping PCM."""
        while True:
            kind, data = self.recv()
            if kind == "text":
                return json.loads(data)
            expect(kind == "binary", f"expected a message, got {kind} {data}")

    def close(self):
        self.s.close()


def power(samples, rate, hz):
    """Goertzel: the power of `hz` in `samples`."""
    k = 2.0 * math.cos(2.0 * math.pi * hz / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + k * s1 - s2, s1
    return s1 * s1 + s2 * s2 - k * s1 * s2


def peak_near_440(samples, rate):
    """The strongest frequency: 440 +- 10 Hz in 1 Hz steps, checked against tones elsewhere."""
    near = max(range(430, 451), key=lambda hz: power(samples, rate, hz))
    best = power(samples, rate, near)
    for hz in (110, 220, 330, 400, 480, 550, 660, 880, 1000, 2000):
        expect(power(samples, rate, hz) < best / 100, f"{hz} Hz is as strong as {near} Hz")
    return near


def pcm(ws, frames, frame_bytes):
    out = []
    for i in range(frames):
        kind, data = ws.recv()
        expect(kind == "binary", f"frame {i}: expected PCM, got {kind} {data}")
        expect(len(data) == frame_bytes, f"frame {i} has {len(data)} bytes, not {frame_bytes}")
        out.extend(struct.unpack(f"<{len(data) // 2}h", data))
    return out


def check_audio(api, cid):
    c = api.json("GET", f"/api/computers/{cid}")
    base = f"/desktops/{c['instance_id']}/ws"
    token = c["vnc_password"]
    events = WebSocket(api.sock, f"{base}/events?token={token}")
    events.send_json({"type": "subscribe", "event_types": ["audio_stream_start", "audio_stream_stop"]})
    expect(events.next_json()["type"] == "subscribed", "events: no subscribed")

    # 1200 samples at 48 kHz are exactly 11 periods of 440 Hz: repeated, 120 s of tone made cheaply
    # (Python in the rig's guest is ~100x slower than here).
    bash(api, cid, "python3 -c \"import math,struct,wave; w=wave.open('/tmp/tone.wav','wb'); "
                   "w.setnchannels(1); w.setsampwidth(2); w.setframerate(48000); "
                   "w.writeframes(b''.join(struct.pack('<h', int(16000*math.sin(2*math.pi*440*i/48000))) "
                   "for i in range(1200)) * 4800)\" && (nohup paplay /tmp/tone.wav >/dev/null 2>&1 &)")
    poll("the tone plays", lambda: "paplay" in bash(api, cid, "pgrep -a paplay || true"), 120, every_s=2)
    step("audio: a 440 Hz tone plays in the guest")

    ws = WebSocket(api.sock, f"{base}/audio?token={token}&sample_rate=24000&channels=1")
    started = ws.next_json()
    expect(started == {"type": "started", "sample_rate": 24000, "channels": 1}, f"started: {started}")
    pcm(ws, 10, 960)
    samples = pcm(ws, 100, 960)
    hz = peak_near_440(samples, 24000)
    expect(abs(hz - 440) <= 5, f"the spectral peak is at {hz} Hz")
    step(f"audio: 2 s at 24 kHz mono in 960-byte frames, peak at {hz} Hz")
    e = events.next_json()
    expect(e.get("event", {}).get("type") == "audio_stream_start", f"event: {e}")
    ws.send_json({"type": "ping"})
    expect(ws.next_json() == {"type": "pong"}, "no pong")
    ws.send_json({"type": "stop"})
    while True:
        kind, data = ws.recv()
        if kind == "close":
            expect(data == 1000, f"stop closed with {data}")
            break
    ws.close()
    e = events.next_json()
    expect(e.get("event", {}).get("type") == "audio_stream_stop", f"event: {e}")
    step("audio: ping/pong, stop -> 1000, audio_stream_start and audio_stream_stop arrived")

    bash(api, cid, "pkill paplay || true")
    poll("the tone stops", lambda: "paplay" not in bash(api, cid, "pgrep -a paplay || true"), 120, every_s=2)
    ws = WebSocket(api.sock, f"{base}/audio?token={token}&sample_rate=24000&channels=1")
    expect(ws.next_json()["type"] == "started", "no started")
    pcm(ws, 10, 960)
    loudest = max(abs(v) for v in pcm(ws, 50, 960))
    expect(loudest <= 1, f"silence expected, a sample is {loudest}")
    ws.close()
    ws = WebSocket(api.sock, f"{base}/audio?token={token}&sample_rate=96000")
    err = ws.next_json()
    expect(err.get("type") == "error" and "sample_rate" in err.get("message", ""), f"bad rate: {err}")
    expect(ws.recv() == ("close", 4500), "a bad rate does not close with 4500")
    ws.close()
    events.close()
    step("audio: silence when nothing plays; sample_rate=96000 -> error, 4500")


class CallError(Exception):
    """A stream call that did not succeed: the API's error answer, or what the SDK raised."""


class ApiComputer:
    """The three stream calls as plain API calls, for a run without the SDK: what the SDK sends."""

    driver = "the API"
    record = staticmethod(lambda answer: None)  # check_rtmp keeps every answer

    def __init__(self, api, cid):
        self.api, self.cid = api, cid

    def _call(self, method, path, body=None):
        status, data = self.api.call(method, f"/api/computers/{self.cid}/{path}", body)
        self.record(json.dumps(data) if isinstance(data, (dict, list)) else repr(data))
        if not 200 <= status < 300 or not isinstance(data, dict):
            raise CallError(f"{method} {path} answered {status}: {str(data)[:300]}")
        return data

    def start_stream(self, connection):
        return self._call("POST", "stream/start", {"connection_name": connection})

    def stream_status(self):
        return self._call("GET", "stream/status")

    def stop_stream(self):
        return self._call("POST", "stream/stop")

    def close(self):
        pass


SDK_CALLS = ("start_stream", "stream_status", "stop_stream")


class SdkComputer:
    """The official SDK's `Computer(computer_id=cid)` (configured with DESKD_BASE and DESKD_KEY, as
    in orgo_sdk_vm.py), in the SDK's own Python (>= 3.12, the venv tests/sdk/setup.sh makes; the
    flows run on the system's): this file runs there with `--sdk-serve CID` and makes each call it
    is sent, one JSON line each way. It dies with this flow (setpriv --pdeathsig)."""

    driver = "the SDK"
    record = staticmethod(lambda answer: None)  # check_rtmp keeps every answer

    def __init__(self, python, cid):
        for var in ("DESKD_BASE", "DESKD_KEY"):
            expect(os.environ.get(var), f"{var} is not set: the SDK's Computer needs it")
        self.proc = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", python, os.path.abspath(__file__), "--sdk-serve", cid],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _call(self, method, *args):
        expect(self.proc.poll() is None, f"the SDK's process ended (exit {self.proc.returncode}) before {method}()")
        self.proc.stdin.write(json.dumps({"method": method, "args": list(args)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise Failed(f"the SDK's process ended (exit {self.proc.wait()}) during computer.{method}()")
        self.record(line)
        r = json.loads(line)
        if "error" in r:
            raise CallError(f"computer.{method}() raised: {r['error']}")
        expect(isinstance(r.get("answer"), dict), f"computer.{method}() returned {r.get('answer')!r}")
        return r["answer"]

    def start_stream(self, connection):
        return self._call("start_stream", connection)

    def stream_status(self):
        return self._call("stream_status")

    def stop_stream(self):
        return self._call("stop_stream")

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def sdk_serve(cid):
    """`--sdk-serve CID`: SdkComputer's other end, in the SDK's Python."""
    from orgo import Computer
    reply, sys.stdout = sys.stdout, sys.stderr  # whatever the SDK prints stays out of the answers
    computer = Computer(computer_id=cid, api_key=os.environ["DESKD_KEY"],
                        base_api_url=os.environ["DESKD_BASE"], verbose=False)
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("method") not in SDK_CALLS:
            out = {"error": f"not a stream call: {req.get('method')!r}"}
        else:
            try:
                out = {"answer": getattr(computer, req["method"])(*req.get("args", []))}
            except Exception as e:  # the SDK raises plain Exception with the API's error message
                out = {"error": str(e)}
        reply.write(json.dumps(out) + "\n")
        reply.flush()
    return 0


def listening(port):
    """True once something listens on 127.0.0.1:`port` (read from /proc: a probe connection would
    be taken by the one-shot receiver as its publisher)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return any(len(x) > 3 and x[1] == want and x[3] == "0A" for x in (line.split() for line in f))


class Receiver:
    """A real RTMP server on this host: `ffmpeg -listen 1` on 127.0.0.1:`port` takes one publisher
    of live/`key` and copies what arrives (`-c copy`) into a FLV file; it exits once that publisher
    hangs up. It dies with this flow (setpriv --pdeathsig) and `kill()` ends it on every other path."""

    def __init__(self, port, key, folder):
        expect(not listening(port),
               f"something already listens on 127.0.0.1:{port} (RIG_RTMP_PORT): the RTMP receiver needs that port")
        self.out = os.path.join(folder, "received.flv")
        self.progress = os.path.join(folder, "progress")
        self.log = os.path.join(folder, "receiver.log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", "ffmpeg", "-hide_banner", "-loglevel", "warning", "-nostdin",
                 "-nostats", "-progress", self.progress, "-listen", "1", "-f", "flv",
                 "-i", f"rtmp://127.0.0.1:{port}/live/{key}", "-c", "copy", "-f", "flv", "-y", self.out],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        poll(f"the RTMP receiver listens on 127.0.0.1:{port}",
             lambda: listening(port) or self.proc.poll() is not None, 30, every_s=0.1)
        expect(self.proc.poll() is None, f"the RTMP receiver exited {self.proc.returncode}: {self.tail()}")

    def tail(self):
        try:
            with open(self.log, errors="replace") as f:
                lines = f.read().strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-5:]) or "(nothing in its log)"

    def running(self):
        return self.proc.poll() is None

    def media_s(self):
        """Seconds of stream written so far (ffmpeg's -progress out_time_us; 0 before the first)."""
        try:
            with open(self.progress) as f:
                times = [line.split("=", 1)[1].strip() for line in f if line.startswith("out_time_us=")]
        except FileNotFoundError:
            return 0.0
        return int(times[-1]) / 1e6 if times and times[-1].isdigit() else 0.0

    def finish(self, limit_s=60):
        """ffprobe's JSON of the file (streams, duration, every packet's time) once the receiver has
        ended by itself (the publisher hung up)."""
        try:
            self.proc.wait(limit_s)
        except subprocess.TimeoutExpired:
            got = self.media_s()
            self.kill()
            raise Failed(f"the receiver was still connected {limit_s} s after stop_stream() ({got:.1f} s received): "
                         "the stream did not end")
        expect(self.proc.returncode == 0, f"the receiver exited {self.proc.returncode}: {self.tail()}")
        r = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=index,codec_type,codec_name,width,height",
                            "-show_entries", "format=duration", "-show_entries", "packet=stream_index,pts_time",
                            "-of", "json", self.out],
                           capture_output=True, text=True, timeout=120)
        expect(r.returncode == 0, f"ffprobe of what the receiver wrote failed: {r.stderr.strip()[-300:]}")
        return json.loads(r.stdout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def key_pattern():
    """A grep pattern for KEY that is not KEY itself (so that sending it leaves no copy of the key)."""
    pattern = KEY.replace(".", "[.]")
    assert pattern != KEY, "KEY needs a '.' for key_pattern()"
    return pattern


def check_log(path, *present):
    """The serve log (deskd's log, the VMMs' and the rig's) has no copy of the key, and does have
    each of `present` (so it is the log of these calls, written through to here)."""
    def text():
        with open(path, errors="replace") as f:
            return f.read()
    poll(f"{path} has the stream calls ({', '.join(present)})", lambda: all(p in text() for p in present),
         60, every_s=2)
    hits = [n for n, line in enumerate(text().splitlines(), 1) if KEY in line]
    expect(not hits, f"the stream key is in {path}, line(s) {hits[:5]}")
    return len(text().splitlines())


def check_rtmp(api, cid, rtmp_url, receiver=None, computer=None, logs=()):
    """See the module's description. `computer` makes the stream calls (SdkComputer, or
    ApiComputer by default); `receiver` (a Receiver) is what listens at `rtmp_url` for live/KEY;
    `logs` are log files that must not have the key."""
    t_all = time.monotonic()
    answers = []

    def call(method, path, body=None, want=None):
        status, data = api.call(method, path, body)
        answers.append(json.dumps(data) if isinstance(data, (dict, list)) else repr(data))
        if want is not None:
            expect(status == want, f"{method} {path} answered {status}: {str(data)[:300]}")
        return data

    computer = computer or ApiComputer(api, cid)
    computer.record = answers.append
    name = f"rig-{uuid.uuid4().hex[:6]}"
    saved = call("POST", "/api/stream-connections",
                 {"name": name, "rtmp_url": rtmp_url, "stream_key": KEY, "bitrate_kbps": 1500,
                  "resolution": "1280x720", "framerate": 10}, want=201)
    expect(saved["stream_key"] == "********", f"the key is not masked: {saved}")
    idle = computer.stream_status()
    expect(idle == {"status": "idle"}, f"stream_status() before the start: {idle}")
    started = computer.start_stream(name)
    expect(started.get("status") == "streaming" and started.get("pid"), f"start_stream(): {started}")
    try:
        again = computer.start_stream(name)
    except CallError as e:
        again = e
    expect(isinstance(again, CallError) and "already" in str(again),
           f"a second start_stream() while streaming did not fail as one stream per computer: {again}")
    step(f"rtmp: {computer.driver}'s start_stream -> streaming, encoder pid {started['pid']}; a second start "
         f"is refused ({str(again)[:90]})")

    # Until the receiver has RECEIVED_S of the stream: the encoder's start and the guest's speed in
    # the rig vary a lot. Without a receiver, STREAM_S.
    t0, polls, got = time.monotonic(), 0, 0.0
    while True:
        s = computer.stream_status()
        polls += 1
        expect(s.get("status") == "streaming" and s.get("pid") == started["pid"],
               f"stream_status() while streaming: {s}" + (f" (receiver: {receiver.tail()})" if receiver else ""))
        if receiver is None:
            if time.monotonic() - t0 >= STREAM_S:
                break
        else:
            got = receiver.media_s()
            if got >= RECEIVED_S:
                break
            expect(receiver.running(), f"the receiver ended after {got:.1f} s of stream: {receiver.tail()}")
            expect(time.monotonic() - t0 < STREAM_LIMIT_S,
                   f"the receiver had only {got:.1f} s of the stream {STREAM_LIMIT_S} s after the start "
                   f"(receiver: {receiver.tail()})")
        time.sleep(2)
    took = time.monotonic() - t0
    got_text = f", the receiver had {got:.1f} s of it" if receiver else ""
    step(f"rtmp: streaming to {rtmp_url} for {took:.0f} s{got_text}; stream_status said streaming with pid "
         f"{started['pid']} {polls} time(s)")
    stopped = computer.stop_stream()
    expect(stopped == {"success": True}, f"stop_stream(): {stopped}")
    idle = computer.stream_status()
    expect(idle == {"status": "idle"}, f"stream_status() after stop_stream(): {idle}")
    if receiver is not None:
        t1 = time.monotonic()
        info = receiver.finish()
        streams = info.get("streams", [])
        video = [s for s in streams if s.get("codec_type") == "video"]
        expect(any(s.get("codec_name") == "h264" and (s.get("width"), s.get("height")) == (1280, 720)
                   for s in video), f"no 1280x720 H.264 video: {streams}")
        expect(any(s.get("codec_type") == "audio" and s.get("codec_name") == "aac" for s in streams),
               f"no AAC audio: {streams}")
        duration = float(info.get("format", {}).get("duration", 0))
        expect(duration >= 5, f"only {duration} s arrived")
        # Each track's own span, from its packets' times: 5 s of each, and of video at least a
        # frame a second (not two stills 5 s apart).
        kinds = {s.get("index"): s.get("codec_type") for s in streams}
        times = {"video": [], "audio": []}
        for p in info.get("packets", []):
            if kinds.get(p.get("stream_index")) in times and p.get("pts_time") not in (None, "N/A"):
                times[kinds[p["stream_index"]]].append(float(p["pts_time"]))
        span = {k: max(v) - min(v) if v else 0.0 for k, v in times.items()}
        what = (f"video: {len(times['video'])} frames over {span['video']:.1f} s, "
                f"audio: {len(times['audio'])} packets over {span['audio']:.1f} s")
        expect(span["video"] >= 5 and span["audio"] >= 5 and len(times["video"]) >= 5,
               f"less than 5 s of video or audio arrived ({what})")
        step(f"rtmp: stop_stream -> idle; the receiver ended {time.monotonic() - t1:.1f} s later with "
             f"{duration:.1f} s of 1280x720 H.264 and AAC audio ({what}; {os.path.getsize(receiver.out)} bytes)")

    bad = f"rig-bad-{uuid.uuid4().hex[:6]}"
    call("POST", "/api/stream-connections", {"name": bad, "rtmp_url": "rtmp://127.0.0.1:1/live",
                                            "stream_key": KEY}, want=201)
    computer.start_stream(bad)
    t1 = time.monotonic()
    s = poll("the encoder gives up on a port nobody listens on",
             lambda: (lambda s: s if s.get("status") == "terminated" else None)(computer.stream_status()),
             300, every_s=2)
    expect("connection refused" in s.get("message", "").lower(), f"terminated without the reason: {s}")
    computer.stop_stream()
    step(f"rtmp: a dead port -> terminated after {time.monotonic() - t1:.0f} s ({s['message'][:80]}...)")
    listed = call("GET", "/api/stream-connections", want=200)
    for c in listed["stream_connections"]:
        expect(c["stream_key"] == "********", f"the key is not masked in the list: {c}")
    for n in (name, bad):
        call("DELETE", f"/api/stream-connections/{n}", want=200)
    call("GET", f"/api/computers/{cid}/console?format=text", want=200)
    expect(not any(KEY in a for a in answers), "the stream key appeared in an answer")
    # The guest's journal has the agent's log of this stream (and would have an encoder's line
    # with the key, had the agent not removed it).
    seen = bash(api, cid, "sudo -n journalctl -b --no-pager -o cat >/tmp/deskd-journal.txt; "
                          "echo $(wc -l </tmp/deskd-journal.txt) "
                          f"$(grep -c 'stream started: encoder pid {started['pid']},' /tmp/deskd-journal.txt) "
                          f"$(grep -c 'stream terminated:' /tmp/deskd-journal.txt) "
                          f"$(grep -c -e '{key_pattern()}' /tmp/deskd-journal.txt); rm -f /tmp/deskd-journal.txt")
    lines, start_lines, terminated_lines, key_lines = (int(x) for x in seen.split())
    expect(start_lines >= 1 and terminated_lines >= 1,
           f"the guest's journal ({lines} lines) lacks the agent's log of the streams: {seen}")
    expect(key_lines == 0, f"the stream key is in {key_lines} line(s) of the guest's journal")
    checked = [f"the guest's journal ({lines} lines)"]
    for path in logs:
        n = check_log(path, f"/api/computers/{cid}/stream/start", f"/api/computers/{cid}/stream/stop")
        checked.append(f"{os.path.basename(path)} ({n} lines)")
    step(f"rtmp: the key in no answer, nor in {', '.join(checked)}; the RTMP step took "
         f"{time.monotonic() - t_all:.0f} s")


def check_rig_rtmp(api, cid):
    """check_rtmp through the rig's internet stand-in: a Receiver on this host's
    127.0.0.1:RIG_RTMP_PORT, which the guest reaches as RIG_RTMP_URL; the stream calls through the
    official SDK when DESKD_SDK_PYTHON names its Python (tests/sdk-rig-e2e sets it), the API
    otherwise; the serve log (RIG_SERVE_LOG, set by tests/sdk-rig-e2e) checked for the key."""
    folder = tempfile.mkdtemp(prefix="deskd-rtmp.")
    receiver = computer = None
    try:
        receiver = Receiver(RTMP_PORT, KEY, folder)
        sdk_python = os.environ.get("DESKD_SDK_PYTHON")
        if sdk_python:
            computer = SdkComputer(sdk_python, cid)
        else:
            step("rtmp: no DESKD_SDK_PYTHON: the stream calls go through the API, not the SDK")
        logs = [os.environ["RIG_SERVE_LOG"]] if os.environ.get("RIG_SERVE_LOG") else []
        check_rtmp(api, cid, RIG_RTMP_URL, receiver, computer, logs)
    finally:
        if computer is not None:
            computer.close()
        if receiver is not None:
            receiver.kill()
        shutil.rmtree(folder, ignore_errors=True)


def standalone(api, rtmp):
    ws = api.json("POST", "/api/projects", {"name": f"media-{uuid.uuid4().hex[:6]}"})["id"]
    cid = api.json("POST", "/api/computers", {"project_id": ws, "name": "media-1"})["id"]
    poll("the computer runs", lambda: api.status_of(cid) in ("running", "error"), 900, every_s=2)
    expect(api.status_of(cid) == "running", f"the computer is {api.status_of(cid)}")
    check_audio(api, cid)
    if rtmp:
        check_rig_rtmp(api, cid)


def main():
    if sys.argv[1:2] == ["--sdk-serve"] and len(sys.argv) == 3:
        return sdk_serve(sys.argv[2])
    # run_flow's parser knows only --info-dir: take --rtmp out first.
    rtmp = "--rtmp" in sys.argv
    if rtmp:
        sys.argv.remove("--rtmp")
    return run_flow(__doc__, lambda api, _read: standalone(api, rtmp), passed="all media steps passed")


if __name__ == "__main__":
    sys.exit(main())
