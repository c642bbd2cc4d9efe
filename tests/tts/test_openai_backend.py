"""The openai backend against a real local HTTP server speaking ``POST /v1/audio/speech`` (hibari inside)."""

from __future__ import annotations

import io
import json
import threading
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import pytest

from parley.audio import float_to_pcm16, rms_dbfs
from parley.errors import BackendUnavailable, InvalidInput
from parley.v1 import common_pb2, tts_pb2, tts_pb2_grpc
from services.tts.backends.openai_backend import OpenAIBackend
from services.tts.config import OpenAIConfig
from services.tts.server import build_app

pytestmark = pytest.mark.models

API_KEY = "sk-test-123"


@pytest.fixture(scope="module")
def speech_server(hibari_backend):
    """An OpenAI-compatible speech endpoint on loopback; yields (base_url, list of received request bodies)."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def _reply(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):  # noqa: N802 - http.server naming
            if self.path != "/v1/audio/speech":
                return self._reply(404, b'{"error": "not found"}', "application/json")
            if self.headers.get("Authorization") != f"Bearer {API_KEY}":
                return self._reply(401, b'{"error": "bad key"}', "application/json")
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append(body)
            if body.get("voice") != "heart":
                return self._reply(400, b'{"error": "voice not found"}', "application/json")
            syn = hibari_backend.synthesize(body["input"], float(body.get("speed", 1.0)))
            pcm = float_to_pcm16(syn.audio)
            if body.get("response_format") == "wav":
                buf = io.BytesIO()
                with wave.open(buf, "wb") as w:
                    w.setnchannels(1)
                    w.setsampwidth(2)
                    w.setframerate(syn.sample_rate)
                    w.writeframes(pcm)
                return self._reply(200, buf.getvalue(), "audio/wav")
            return self._reply(200, pcm, "audio/pcm")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1", received
    server.shutdown()
    server.server_close()


def backend(base_url: str, **kw) -> OpenAIBackend:
    b = OpenAIBackend(OpenAIConfig(base_url=base_url, api_key=API_KEY, model="hibari", voice="heart", **kw))
    b.load()
    return b


@pytest.mark.parametrize("fmt", ["pcm", "wav"])
def test_synthesizes_through_the_endpoint(speech_server, fmt):
    base_url, received = speech_server
    b = backend(base_url, response_format=fmt)
    syn = b.synthesize("Hello from the speech endpoint.", speed=1.2)
    b.close()
    assert syn.sample_rate == 24_000
    assert 0.8 < len(syn.audio) / syn.sample_rate < 4
    assert rms_dbfs(syn.audio) > -35
    assert syn.words == [] and syn.phonemes == []  # such endpoints give no timings
    assert received[-1] == {
        "model": "hibari",
        "input": "Hello from the speech endpoint.",
        "voice": "heart",
        "response_format": fmt,
        "speed": 1.2,
    }


def test_errors_map_to_parley_errors(speech_server):
    base_url, _ = speech_server
    with pytest.raises(InvalidInput, match="rejected the request \\(400\\)"):
        backend(base_url).synthesize("Hi.", voice="nova")
    with pytest.raises(BackendUnavailable, match="401"):
        OpenAIBackend(OpenAIConfig(base_url=base_url, api_key="wrong", voice="heart")).synthesize("Hi.")
    with pytest.raises(BackendUnavailable, match="unreachable"):
        OpenAIBackend(OpenAIConfig(base_url="http://127.0.0.1:9/v1", timeout_s=2)).synthesize("Hi.")
    with pytest.raises(InvalidInput, match="unknown voice"):
        backend(base_url, voices=["heart"]).check_voice("alloy")


async def test_grpc_stream_with_the_openai_backend(speech_server, tts_config, session_id):
    base_url, _ = speech_server
    config = tts_config(backend="openai", openai={"base_url": base_url, "api_key": API_KEY, "voice": "heart"})
    app = build_app(config)
    async with app.running() as address, grpc.aio.insecure_channel(address) as channel:
        stub = tts_pb2_grpc.TtsStub(channel)
        requests = [
            tts_pb2.TtsRequest(
                start=tts_pb2.TtsStart(session=common_pb2.SessionRef(session_id=session_id), sample_rate=16_000)
            ),
            tts_pb2.TtsRequest(text=tts_pb2.TextPiece(text="Good morning. How can I help you today?")),
            tts_pb2.TtsRequest(flush=tts_pb2.TtsFlush()),
        ]
        events = [e async for e in stub.Synthesize(iter(requests))]
    audio = [e.audio for e in events if e.HasField("audio")]
    assert events[-1].done.clauses == 2
    assert all(a.audio.sample_rate == 16_000 and not a.words and not a.phonemes for a in audio)
    total = sum(len(a.audio.data) // 2 for a in audio)
    assert abs(events[-1].done.audio_duration_us - total * 1e6 / 16_000) < 100
    assert np.all(np.diff([a.audio.timestamp_us for a in audio]) > 0)
