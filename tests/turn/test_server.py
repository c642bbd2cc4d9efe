"""The TurnTaking service over real gRPC on loopback, with the real models and Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parley.audio import resample
from tests.turn.helpers import audio_requests, run_stream, silence, speech_bounds, start_request, trim, word_gaps

pytestmark = pytest.mark.models

ROOT = Path(__file__).resolve().parents[2]


async def test_detect_real_time_48k_stream(target: str, session_id: str, speak, turn_app) -> None:
    """0.5 s silence + a question + 1.5 s silence, PCM16 at 48 kHz in 20 ms frames, sent in real time."""
    rate = 48_000
    speech = speak("What is the capital of France?", rate=rate).samples
    audio = np.concatenate([silence(0.5, rate), speech, silence(1.5, rate)])
    t0 = 7_000_000  # the session clock need not start at 0
    requests = [start_request(session_id, "trace-rt")] + audio_requests(audio, rate, 20, start_us=t0)
    result = await run_stream(target, requests, pace_s=0.02)

    assert result.code is None, result.details
    assert result.kinds() == ["speech_started", "speech_stopped", "prediction", "end_of_turn"]
    assert all(e.trace_id == "trace-rt" for e in result.events)
    started, stopped, prediction, eot = result.events
    first, last = speech_bounds(audio, rate)
    assert abs(started.speech_started.speech_start_us - (t0 + first * 1e6)) < 100_000
    assert started.timestamp_us >= started.speech_started.speech_start_us + 120_000
    assert 0 <= stopped.speech_stopped.speech_end_us - (t0 + last * 1e6) < 200_000
    assert stopped.timestamp_us - stopped.speech_stopped.speech_end_us == pytest.approx(160_000, abs=32_000)
    assert prediction.prediction.complete and prediction.prediction.probability > 0.5
    assert prediction.prediction.inference_ms > 0
    assert eot.end_of_turn.reason == "model"
    assert eot.end_of_turn.speech_end_us == stopped.speech_stopped.speech_end_us
    assert eot.timestamp_us == stopped.timestamp_us
    times = [e.timestamp_us for e in result.events]
    assert times == sorted(times)

    # Wall-clock latency: the 20 ms chunk holding the last speech sample was sent -> EndOfTurn arrived.
    end_chunk = 1 + int(last / 0.02)  # request 0 is the TurnStart
    latency = result.received_at[-1] - result.sent_at[end_chunk]
    print(
        f"\nend of speech -> EndOfTurn: {latency * 1e3:.0f} ms (VAD stop {stopped.timestamp_us - t0 - last * 1e6:.0f}"
        f" us of audio after the true end; inference {eot.end_of_turn.inference_ms:.1f} ms)"
    )
    assert latency < 0.6

    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{turn_app.metrics_port}/metrics")).text
    for stage in ("vad_frame", "end_of_turn_inference", "end_of_turn_decision"):
        assert f'parley_stage_latency_seconds_count{{service="turn",stage="{stage}"}}' in text
    assert 'parley_streams_total{code="OK",method="Detect",service="turn"}' in text
    assert 'parley_stream_messages_total{direction="in",method="Detect",service="turn"}' in text


async def test_pause_mid_sentence_then_finish(target: str, session_id: str, speak) -> None:
    """A pause after "...the store and" is judged unfinished; the turn ends after the real ending."""
    full = trim(speak("So I went to the store and then I bought some apples and oranges for my mother.").samples)
    cut = word_gaps(full, 16_000, 1.6, 2.2)[0]
    audio = np.concatenate([silence(0.3), full[:cut], silence(0.7), full[cut:], silence(1.5)])
    audio = resample(audio, 16_000, 24_000)
    requests = [start_request(session_id, "trace-pause")] + audio_requests(audio, 24_000, 40)
    result = await run_stream(target, requests)  # faster than real time: decisions are the same

    assert result.code is None, result.details
    kinds = result.kinds()
    assert kinds[:4] == ["speech_started", "speech_stopped", "prediction", "speech_started"], kinds
    assert not result.events[2].prediction.complete
    assert kinds[-2:] == ["prediction", "end_of_turn"] and result.events[-2].prediction.complete
    assert kinds.count("end_of_turn") == 1 and result.events[-1].end_of_turn.reason == "model"
    assert result.events[-1].end_of_turn.speech_end_us / 1e6 > 0.3 + len(full) / 16_000 - 0.1


async def test_health_serving(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "parley.v1.TurnTaking"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_two_concurrent_sessions(target: str, store, speak) -> None:
    a, b = await store.create(), await store.create()
    audio = np.concatenate([speak("Hello, how are you today?").samples, silence(1.5)])
    reqs = audio_requests(audio, 16_000, 30)
    ra, rb = await asyncio.gather(
        run_stream(target, [start_request(a, "A")] + reqs), run_stream(target, [start_request(b, "B")] + reqs)
    )
    assert ra.kinds() == rb.kinds() and ra.kinds()[-1] == "end_of_turn"
    assert {e.trace_id for e in ra.events} == {"A"} and {e.trace_id for e in rb.events} == {"B"}


async def test_stream_config_overrides(target: str, session_id: str, speak) -> None:
    """TurnConfig fields override the defaults: an end-of-turn threshold of 1.0 forces the timeout."""
    audio = np.concatenate([speak("What is the capital of France?").samples, silence(1.5)])
    requests = [start_request(session_id, end_of_turn_threshold=1.0, silence_timeout_ms=900, vad_stop_ms=96)]
    result = await run_stream(target, requests + audio_requests(audio, 16_000))
    assert result.kinds() == ["speech_started", "speech_stopped", "prediction", "end_of_turn"]
    stopped, eot = result.events[1], result.events[3]
    assert stopped.timestamp_us - stopped.speech_stopped.speech_end_us == pytest.approx(96_000, abs=32_000)
    assert eot.end_of_turn.reason == "silence_timeout"
    assert eot.timestamp_us - eot.end_of_turn.speech_end_us == pytest.approx(900_000, abs=32_000)


def test_python_m_services_turn_serves_and_drains(redis_url: str) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'libs'}{os.pathsep}{ROOT}",
        "PARLEY_TURN__SERVER__PORT": "0",
        "PARLEY_TURN__SERVER__REDIS_URL": redis_url,
        "PARLEY_TURN__SERVER__DRAIN_SECONDS": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.turn"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready" and ready["service"] == "turn" and ready["port"] > 0
        with grpc.insecure_channel(f"127.0.0.1:{ready['port']}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
