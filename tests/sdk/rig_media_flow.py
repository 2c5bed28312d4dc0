#!/usr/bin/env python3
"""The audio stream and RTMP streaming of a running computer through deskd (issue 15), in the style
of rig_api_flow.py. `check_audio` runs in the API flow (rig_api_flow.py); `check_rtmp` is not wired yet.

`check_audio(api, cid)` on a running computer `cid`:

  `audio_stream_start`/`audio_stream_stop` subscribed on /ws/events; a 440 Hz tone played in the
  guest (a WAV made by the guest's python3, `paplay` into the default sink `speaker`) is captured
  from /desktops/{instance}/ws/audio at 24 kHz mono for 2 s: `started`, frames of 960 bytes, the
  spectral peak within 5 Hz of 440; `ping` -> `pong`, `stop` -> close 1000, both events arrive;
  with the tone stopped, 1 s of silence; a bad sample_rate is an error then 4500.

`check_rtmp(api, cid, rtmp_url, received=None)` with `rtmp_url` an RTMP URL the guest reaches
(the rig's internet stand-in) where a receiver listens for the stream key `KEY` (e.g.
`ffmpeg -listen 1 -f flv -i rtmp://0.0.0.0:PORT/live/KEY -c copy OUT.flv` beside the stand-in), and
`received()` (optional) returning ffprobe's JSON (`-show_entries stream=codec_type,codec_name,
width,height -show_entries format=duration -of json`) of what the receiver wrote once it ended:

  a stream connection saved (key masked in the answer and the list); stream/start -> streaming
  with a pid, a second start 409; streaming for 40 s; stop -> idle; the receiver got >= 5 s of
  1280x720 H.264 with an AAC track; a connection to a port nobody listens on ends as `terminated`
  with the encoder's reason; the key is in no answer.

Run alone: `rig_media_flow.py --info-dir DIR [--rtmp-url URL]` creates a computer, waits for it and
runs the checks (RTMP only with --rtmp-url). Exits 1 on the first mismatch.
"""

import base64
import json
import math
import os
import socket
import struct
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rig_api_flow import bash, expect, poll, run_flow, step  # noqa: E402

KEY = "rig-Sekr3t_key.15"
# The rig's guests are 50-100x slower than hardware: patient reads.
WS_TIMEOUT_S = 120
STREAM_S = 40


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


def check_rtmp(api, cid, rtmp_url, received=None):
    answers = []

    def call(method, path, body=None, want=None):
        status, data = api.call(method, path, body)
        answers.append(json.dumps(data) if isinstance(data, (dict, list)) else repr(data))
        if want is not None:
            expect(status == want, f"{method} {path} answered {status}: {str(data)[:300]}")
        return data

    name = f"rig-{uuid.uuid4().hex[:6]}"
    saved = call("POST", "/api/stream-connections",
                 {"name": name, "rtmp_url": rtmp_url, "stream_key": KEY, "bitrate_kbps": 1500,
                  "resolution": "1280x720", "framerate": 10}, want=201)
    expect(saved["stream_key"] == "********", f"the key is not masked: {saved}")
    expect(call("GET", f"/api/computers/{cid}/stream/status", want=200) == {"status": "idle"}, "not idle")
    started = call("POST", f"/api/computers/{cid}/stream/start", {"connection_name": name}, want=200)
    expect(started.get("status") == "streaming" and started.get("pid"), f"start: {started}")
    call("POST", f"/api/computers/{cid}/stream/start", {"connection_name": name}, want=409)
    # The encoder's start in the rig's slow guest takes a while; 40 s leave well over 5 s of stream.
    t0 = time.monotonic()
    while time.monotonic() - t0 < STREAM_S:
        s = call("GET", f"/api/computers/{cid}/stream/status", want=200)
        expect(s.get("status") == "streaming" and s.get("pid") == started["pid"], f"status: {s}")
        time.sleep(2)
    step(f"rtmp: streaming to {rtmp_url} with encoder pid {started['pid']} for {STREAM_S} s")
    expect(call("POST", f"/api/computers/{cid}/stream/stop", want=200) == {"success": True}, "stop")
    expect(call("GET", f"/api/computers/{cid}/stream/status", want=200) == {"status": "idle"}, "not idle after stop")
    if received is not None:
        info = received()
        streams = info.get("streams", [])
        video = [s for s in streams if s.get("codec_type") == "video"]
        expect(any(s.get("codec_name") == "h264" and (s.get("width"), s.get("height")) == (1280, 720)
                   for s in video), f"no 1280x720 H.264 video: {streams}")
        expect(any(s.get("codec_type") == "audio" and s.get("codec_name") == "aac" for s in streams),
               f"no AAC audio: {streams}")
        duration = float(info.get("format", {}).get("duration", 0))
        expect(duration >= 5, f"only {duration} s arrived")
        step(f"rtmp: the receiver got {duration:.1f} s of 1280x720 H.264 with AAC audio")

    bad = f"rig-bad-{uuid.uuid4().hex[:6]}"
    call("POST", "/api/stream-connections", {"name": bad, "rtmp_url": "rtmp://127.0.0.1:1/live",
                                            "stream_key": KEY}, want=201)
    call("POST", f"/api/computers/{cid}/stream/start", {"connection_name": bad}, want=200)
    s = poll("the encoder gives up on a port nobody listens on",
             lambda: (lambda s: s if s.get("status") == "terminated" else None)(
                 call("GET", f"/api/computers/{cid}/stream/status", want=200)), 300, every_s=2)
    expect("connection refused" in s.get("message", "").lower(), f"terminated without the reason: {s}")
    call("POST", f"/api/computers/{cid}/stream/stop", want=200)
    listed = call("GET", "/api/stream-connections", want=200)
    for c in listed["stream_connections"]:
        expect(c["stream_key"] == "********", f"the key is not masked in the list: {c}")
    for n in (name, bad):
        call("DELETE", f"/api/stream-connections/{n}", want=200)
    expect(not any(KEY in a for a in answers), "the stream key appeared in an answer")
    step(f"rtmp: a dead port -> terminated ({s['message'][:80]}...); the key in no answer")


def standalone(api, rtmp_url):
    ws = api.json("POST", "/api/projects", {"name": f"media-{uuid.uuid4().hex[:6]}"})["id"]
    cid = api.json("POST", "/api/computers", {"project_id": ws, "name": "media-1"})["id"]
    poll("the computer runs", lambda: api.status_of(cid) in ("running", "error"), 900, every_s=2)
    expect(api.status_of(cid) == "running", f"the computer is {api.status_of(cid)}")
    check_audio(api, cid)
    if rtmp_url:
        check_rtmp(api, cid, rtmp_url)


def main():
    # run_flow's parser knows only --info-dir: take --rtmp-url out first.
    rtmp_url = None
    if "--rtmp-url" in sys.argv:
        i = sys.argv.index("--rtmp-url")
        if i + 1 >= len(sys.argv):
            print("rig_media_flow.py: --rtmp-url needs a URL", file=sys.stderr)
            return 2
        rtmp_url = sys.argv[i + 1]
        del sys.argv[i:i + 2]
    return run_flow(__doc__, lambda api, _read: standalone(api, rtmp_url),
                    passed="all media steps passed")


if __name__ == "__main__":
    sys.exit(main())
