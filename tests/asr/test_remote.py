"""The remote backend against a real local OpenAI-compatible HTTP server running faster-whisper."""

from __future__ import annotations

import socket

import grpc
import pytest

from parley.errors import BackendUnavailable, InvalidInput
from parley.v1 import asr_pb2, asr_pb2_grpc
from services.asr.backends.remote import RemoteBackend
from services.asr.config import AsrServiceConfig
from services.asr.server import build_app

from .conftest import QUESTION, control, frames, start, with_silence
from .openai_server import OpenAITranscriptionServer

pytestmark = pytest.mark.models


def test_remote_backend_transcribes_with_word_timings(whisper, speak) -> None:
    audio = speak(QUESTION)
    server = OpenAITranscriptionServer(whisper, api_key="sk-test")
    with server as base_url:
        backend = RemoteBackend(base_url, api_key="sk-test", model="tiny.en")
        rec = backend.transcribe(audio.samples, "en", word_timestamps=True)
        text_only = backend.transcribe(audio.samples, "", word_timestamps=False)
        backend.close()
    assert "capital" in rec.text.lower() and "france" in rec.text.lower()
    assert rec.language == "en" and rec.compute_s > 0
    assert len(rec.words) >= 5
    assert all(0 <= w.start_s <= w.end_s <= audio.duration_s + 1e-6 for w in rec.words)
    assert [w.start_s for w in rec.words] == sorted(w.start_s for w in rec.words)
    assert "france" in text_only.text.lower() and text_only.words == [] and text_only.language == "english"
    first, second = server.requests
    assert first["model"] == ["tiny.en"] and first["response_format"] == ["verbose_json"]
    assert first["timestamp_granularities[]"] == ["word", "segment"] and first["language"] == ["en"]
    assert "language" not in second and "timestamp_granularities[]" not in second


def test_remote_backend_errors_are_clear(whisper, speak) -> None:
    samples = speak(QUESTION).samples
    with OpenAITranscriptionServer(whisper, api_key="right") as base_url:
        with pytest.raises(BackendUnavailable, match="HTTP 401.*Incorrect API key"):
            RemoteBackend(base_url, api_key="wrong").transcribe(samples, "en", True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendUnavailable, match="unreachable"):
        RemoteBackend(f"http://127.0.0.1:{port}/v1", timeout_s=2).transcribe(samples, "en", True)
    with pytest.raises(InvalidInput):
        RemoteBackend("http://x/v1").check_language("english!")


async def test_service_with_remote_backend(whisper, speak, asr_config, session_id) -> None:
    audio = with_silence(speak(QUESTION, rate=16_000), 0.2, 0.3)
    with OpenAITranscriptionServer(whisper) as base_url:
        config = AsrServiceConfig.model_validate(
            {**asr_config.model_dump(), "backend": "remote", "remote": {"base_url": base_url}}
        )
        async with build_app(config).running() as address, grpc.aio.insecure_channel(address) as channel:
            stub = asr_pb2_grpc.AsrStub(channel)
            requests = [start(session_id), *frames(audio), control(asr_pb2.AsrControl.FINALIZE)]
            events = [e async for e in stub.Transcribe(iter(requests))]
    assert len(events) == 1 and "france" in events[0].final.text.lower()
    assert events[0].final.words[0].start_us >= 150_000
