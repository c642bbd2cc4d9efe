"""Fixtures for the ASR tests: one shared Whisper backend and configs for in-process servers."""

from __future__ import annotations

import numpy as np
import pytest

from parley.audio import Audio, encode_frame
from parley.v1 import asr_pb2, common_pb2
from services.asr.backends.faster_whisper_backend import FasterWhisperBackend
from services.asr.config import AsrServiceConfig

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="session")
def whisper() -> FasterWhisperBackend:
    """The CPU default backend (Whisper tiny.en int8), loaded once per test session."""
    backend = FasterWhisperBackend()
    backend.load()
    return backend


@pytest.fixture
def asr_config(redis_url: str) -> AsrServiceConfig:
    """Service config for an in-process server on free loopback ports, backed by the test Redis."""
    return AsrServiceConfig.model_validate(
        {"server": {"port": 0, "metrics_port": 0, "redis_url": redis_url}, "warmup": False}
    )


def frames(audio: Audio, frame_ms: int = 20, start_us: int = 0, float32: bool = False) -> list[asr_pb2.AsrRequest]:
    """``audio`` cut into AudioFrame requests (PCM16, or float32 LE) of ``frame_ms`` with session-clock
    timestamps."""
    step = audio.sample_rate * frame_ms // 1000
    out = []
    for i in range(0, len(audio.samples), step):
        ts = start_us + round(i * 1e6 / audio.sample_rate)
        chunk = audio.samples[i : i + step]
        if float32:
            frame = common_pb2.AudioFrame(
                data=chunk.astype("<f4").tobytes(),
                sample_rate=audio.sample_rate,
                encoding=common_pb2.AUDIO_ENCODING_PCM_F32LE,
                timestamp_us=ts,
            )
        else:
            frame = encode_frame(chunk, audio.sample_rate, ts)
        out.append(asr_pb2.AsrRequest(audio=frame))
    return out


def with_silence(audio: Audio, before_s: float = 0.3, after_s: float = 0.6) -> Audio:
    """``audio`` with silence around it (speech then starts at ``before_s``)."""
    rate = audio.sample_rate
    samples = np.concatenate(
        [np.zeros(int(before_s * rate), np.float32), audio.samples, np.zeros(int(after_s * rate), np.float32)]
    )
    return Audio(samples, rate)


def control(kind: int, at_us: int = 0) -> asr_pb2.AsrRequest:
    return asr_pb2.AsrRequest(control=asr_pb2.AsrControl(kind=kind, at_us=at_us))


def start(session_id: str, partials: bool = False, interval_ms: int = 0, language: str = "") -> asr_pb2.AsrRequest:
    return asr_pb2.AsrRequest(
        start=asr_pb2.AsrStart(
            session=common_pb2.SessionRef(session_id=session_id, trace_id="trace-1"),
            language=language,
            partials=partials,
            partial_interval_ms=interval_ms,
        )
    )
