"""The Asr gRPC service end to end on loopback: real model, real Redis, real HTTP metrics."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parley.audio import Audio, encode_frame
from parley.v1 import asr_pb2, asr_pb2_grpc, common_pb2
from services.asr.server import SERVICE_NAME, build_app

from .conftest import QUESTION, control, frames, start, with_silence

pytestmark = pytest.mark.models

Kind = asr_pb2.AsrControl
LEAD_S, TAIL_S = 0.3, 0.6


def _speech(speak, rate: int = 48_000) -> tuple[Audio, int]:
    """The question at ``rate`` with silence around it, and the session time its speech ends."""
    raw = speak(QUESTION, rate=rate)
    return with_silence(raw, LEAD_S, TAIL_S), round((LEAD_S + raw.duration_s) * 1e6)


async def _conversation_turn(stub, session_id: str, audio: Audio, end_us: int, early: bool, partials: bool):
    """Stream ``audio`` in real time (20 ms frames), then [SPEECH_ENDED, pause,] FINALIZE.

    Returns (events with their arrival times, wall time SPEECH_ENDED was sent, wall time FINALIZE was sent).
    """
    marks: dict[str, float] = {}

    async def requests():
        yield start(session_id, partials=partials, interval_ms=500)
        for request in frames(audio):
            yield request
            await asyncio.sleep(0.02)
        marks["speech_ended"] = time.perf_counter()
        if early:
            yield control(Kind.SPEECH_ENDED, end_us)
            await asyncio.sleep(0.5)  # the end-of-turn model deliberates
        marks["finalize"] = time.perf_counter()
        yield control(Kind.FINALIZE, end_us)

    events = []
    async for event in stub.Transcribe(requests()):
        events.append((time.perf_counter(), event))
    return events, marks


async def test_stream_partials_early_final_health_and_metrics(asr_config, session_id, speak) -> None:
    audio, end_us = _speech(speak)
    app = build_app(asr_config.model_copy(update={"warmup": True}))
    async with app.running() as address, grpc.aio.insecure_channel(address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = asr_pb2_grpc.AsrStub(channel)
        events, marks = await _conversation_turn(stub, session_id, audio, end_us, early=True, partials=True)
        async with httpx.AsyncClient() as http:
            exposition = (await http.get(f"http://127.0.0.1:{app.metrics_port}/metrics")).text

    partials = [(t, e.partial) for t, e in events if e.HasField("partial")]
    finals = [(t, e.final) for t, e in events if e.HasField("final")]
    assert partials and partials[0][0] < marks["speech_ended"], "no partial arrived while audio was streaming"
    assert all(e.trace_id == "trace-1" for _, e in events)
    assert len(finals) == 1 and events[-1][1].HasField("final")
    arrived, final = finals[0]
    text = final.text.lower()
    assert "capital" in text and "france" in text
    assert final.reused_early_decode and final.utterance_index == 0 and final.language == "en"
    # The early final covers the speech: its own decode (to end + pad) or an adopted partial/pause decode.
    assert final.audio_start_us == 0 and end_us <= final.audio_end_us <= round(audio.duration_s * 1e6)
    words = final.words
    assert words[0].start_us >= 0.2e6 and words[-1].end_us <= end_us + 100_000
    assert all(a.start_us <= b.start_us and a.start_us <= a.end_us for a, b in zip(words, words[1:], strict=False))
    finalize_ms = 1000 * (arrived - marks["finalize"])
    print(f"\n[asr] gRPC FINALIZE->final with early decode: {finalize_ms:.1f} ms; partials: {len(partials)}")
    assert finalize_ms < final.compute_ms + 50  # the early decode had a head start over FINALIZE
    for stage in ("partial_decode", "final_decode", "finalize_to_final"):
        assert f'parley_stage_latency_seconds_count{{service="asr",stage="{stage}"}}' in exposition


async def test_finalize_without_early_decode_and_following_utterances(asr_config, session_id, speak) -> None:
    audio = with_silence(speak(QUESTION, rate=16_000), 0.2, 0.2)
    second = speak("Thank you very much.", rate=8_000)  # sent as float32 at 8 kHz
    async with (
        build_app(asr_config.model_copy(update={"pause_decode": False})).running() as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        stub = asr_pb2_grpc.AsrStub(channel)
        t_audio_end = round(audio.duration_s * 1e6)
        requests = [
            start(session_id),
            control(Kind.FINALIZE),  # nothing buffered yet: empty final, not an error
            *frames(audio),
            control(Kind.FINALIZE, t_audio_end),
            *frames(Audio(np.zeros(16_000, np.float32), 16_000), start_us=t_audio_end),
            control(Kind.FINALIZE),  # silence: empty text
            *frames(second, start_us=t_audio_end + 1_000_000, float32=True),
            control(Kind.RESET),
            *frames(second, start_us=t_audio_end + 3_000_000, float32=True),
            control(Kind.FINALIZE),
        ]
        t0 = time.perf_counter()
        finals = [e.final async for e in stub.Transcribe(iter(requests))]
        elapsed = time.perf_counter() - t0
    assert [f.utterance_index for f in finals] == [0, 1, 2, 3]
    assert finals[0].text == "" and finals[2].text == ""
    assert "france" in finals[1].text.lower() and not finals[1].reused_early_decode
    assert "thank you" in finals[3].text.lower() and finals[3].audio_start_us == t_audio_end + 3_000_000
    assert finals[3].words[0].start_us >= finals[3].audio_start_us
    print(
        f"\n[asr] gRPC FINALIZE->final without early decode: {finals[1].compute_ms:.0f} ms decode "
        f"({elapsed:.2f} s for 4 finals)"
    )


async def _expect_error(stub, requests, code: grpc.StatusCode, match: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.Transcribe(iter(requests)):
            pass
    assert info.value.code() == code, info.value.details()
    assert match.lower() in info.value.details().lower(), info.value.details()
    return info.value.details()


async def test_bad_input_is_rejected_while_a_good_stream_goes_on(asr_config, session_id, speak, store) -> None:
    audio, end_us = _speech(speak, rate=24_000)
    other = await store.create()
    ok = asr_pb2.AsrRequest(audio=encode_frame(np.zeros(320, np.float32), 16_000))

    def audio_request(data: bytes, rate: int = 16_000, encoding: int = common_pb2.AUDIO_ENCODING_PCM_S16LE):
        return asr_pb2.AsrRequest(audio=common_pb2.AudioFrame(data=data, sample_rate=rate, encoding=encoding))

    nan = np.array([0.1, np.nan, 0.2, 0.0], "<f4").tobytes()
    bad = [
        ([ok], grpc.StatusCode.INVALID_ARGUMENT, "first message must be AsrStart"),
        ([], grpc.StatusCode.INVALID_ARGUMENT, "empty stream"),
        ([start("no-such-session")], grpc.StatusCode.NOT_FOUND, "unknown session"),
        ([start("bad id!")], grpc.StatusCode.INVALID_ARGUMENT, "session_id"),
        ([start(other, language="de")], grpc.StatusCode.INVALID_ARGUMENT, "English-only"),
        ([start(other), audio_request(b"\0" * 640, rate=1000)], grpc.StatusCode.INVALID_ARGUMENT, "1000 Hz"),
        ([start(other), audio_request(b"\0" * 641)], grpc.StatusCode.INVALID_ARGUMENT, "whole number"),
        (
            [start(other), audio_request(nan, encoding=common_pb2.AUDIO_ENCODING_PCM_F32LE)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "NaN",
        ),
        ([start(other), audio_request(b"\0" * (2 * 16_000 * 6))], grpc.StatusCode.INVALID_ARGUMENT, "5.0 s limit"),
        ([start(other), ok, start(other)], grpc.StatusCode.INVALID_ARGUMENT, "only be sent once"),
        ([start(other), control(Kind.KIND_UNSPECIFIED)], grpc.StatusCode.INVALID_ARGUMENT, "unknown AsrControl"),
        ([start(other), control(Kind.FINALIZE, -5)], grpc.StatusCode.INVALID_ARGUMENT, "negative"),
        ([start(other), asr_pb2.AsrRequest()], grpc.StatusCode.INVALID_ARGUMENT, "empty AsrRequest"),
    ]
    async with build_app(asr_config).running() as address, grpc.aio.insecure_channel(address) as channel:
        stub = asr_pb2_grpc.AsrStub(channel)
        good = asyncio.create_task(_conversation_turn(stub, session_id, audio, end_us, early=True, partials=True))
        await asyncio.sleep(0.5)  # the good stream is under way
        for requests, code, match in bad:
            await _expect_error(stub, requests, code, match)
            await asyncio.sleep(0.05)
        events, _ = await good
    finals = [e.final for _, e in events if e.HasField("final")]
    assert len(finals) == 1 and "france" in finals[0].text.lower() and finals[0].reused_early_decode


def test_python_dash_m_entry_point_serves_and_drains(redis_url) -> None:
    env = {
        **os.environ,
        "PARLEY_ASR__SERVER__PORT": "0",
        "PARLEY_ASR__SERVER__METRICS_PORT": "0",
        "PARLEY_ASR__WARMUP": "false",
        "PARLEY_COMMON__SERVER__REDIS_URL": redis_url,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.asr"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready" and ready["service"] == "asr" and ready["port"] > 0
        with grpc.insecure_channel(f"127.0.0.1:{ready['port']}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


async def test_cancelled_stream_does_not_disturb_the_next_one(asr_config, session_id, speak) -> None:
    audio = with_silence(speak(QUESTION, rate=16_000), 0.2, 0.2)
    async with build_app(asr_config).running() as address, grpc.aio.insecure_channel(address) as channel:
        stub = asr_pb2_grpc.AsrStub(channel)
        call = stub.Transcribe(iter([start(session_id), *frames(audio), control(Kind.FINALIZE)]))
        await asyncio.sleep(0.2)  # the final decode is running
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call.read()
        requests = [start(session_id), *frames(audio), control(Kind.FINALIZE)]
        finals = [e.final async for e in stub.Transcribe(iter(requests))]
    assert len(finals) == 1 and "france" in finals[0].text.lower()
