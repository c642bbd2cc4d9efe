"""The Tts service over real gRPC on loopback, with the real model and a real Redis session store."""

from __future__ import annotations

import asyncio
import time
from itertools import pairwise

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parley.audio import pcm16_to_float
from parley.v1 import common_pb2, tts_pb2, tts_pb2_grpc
from services.tts.server import build_app

pytestmark = pytest.mark.models

REPLY = (
    "The capital of France is Paris. It is famous for the Eiffel Tower, which was finished in 1889 "
    "and is still the most visited monument in the world."
)


def tokens(text: str) -> list[str]:
    """LLM-like pieces: each word with its leading space, punctuation as its own piece."""
    out = []
    for i, word in enumerate(text.split(" ")):
        head = word.rstrip(".,")
        out.append(("" if i == 0 else " ") + head)
        out.extend(word[len(head) :])
    return out


def start(session_id: str, **kw) -> tts_pb2.TtsRequest:
    return tts_pb2.TtsRequest(start=tts_pb2.TtsStart(session=common_pb2.SessionRef(session_id=session_id), **kw))


def text(piece: str) -> tts_pb2.TtsRequest:
    return tts_pb2.TtsRequest(text=tts_pb2.TextPiece(text=piece))


FLUSH = tts_pb2.TtsRequest(flush=tts_pb2.TtsFlush())


async def speak(stub, session_id: str, pieces: list[str], delay: float = 0.0, **start_kw):
    """Stream ``pieces`` (``delay`` apart), flush; return (events with arrival times, flush send time)."""
    call = stub.Synthesize()
    received: list[tuple[float, tts_pb2.TtsEvent]] = []

    async def read():
        async for event in call:
            received.append((time.monotonic(), event))

    reader = asyncio.create_task(read())
    await call.write(start(session_id, **start_kw))
    for piece in pieces:
        await call.write(text(piece))
        if delay:
            await asyncio.sleep(delay)
    flush_at = time.monotonic()
    await call.write(FLUSH)
    await call.done_writing()
    await reader
    return received, flush_at


def check_timeline(events: list[tts_pb2.TtsEvent]) -> tuple[list, list]:
    """Audio timestamps are contiguous; timings sit on the same timeline. Returns (words, phonemes)."""
    audio = [e.audio for e in events if e.HasField("audio")]
    assert audio and events[-1].HasField("done")
    expected_us = 0
    words, phonemes = [], []
    for speech in audio:
        frame = speech.audio
        assert frame.sample_rate and frame.channels == 1
        assert abs(frame.timestamp_us - expected_us) <= 1
        expected_us = frame.timestamp_us + round(len(frame.data) / 2 * 1e6 / frame.sample_rate)
        words += speech.words
        phonemes += speech.phonemes
    assert all(a.end_us <= b.start_us for a, b in pairwise(words))
    assert all(abs(a.end_us - b.start_us) <= 100 for a, b in pairwise(phonemes))  # tiles the stream
    assert phonemes[-1].end_us <= expected_us + 1000
    assert abs(events[-1].done.audio_duration_us - expected_us) <= len(audio)
    return words, phonemes


async def test_streams_clause_by_clause_with_timings(tts_config, session_id):
    app = build_app(tts_config())
    async with app.running() as address, grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "parley.v1.Tts"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = tts_pb2_grpc.TtsStub(channel)
        received, flush_at = await speak(stub, session_id, tokens(REPLY), delay=0.03)
        events = [e for _, e in received]
        audio_times = [t for t, e in received if e.HasField("audio")]
        assert audio_times[0] < flush_at  # the first clause was spoken while text was still arriving
        clauses = [e.audio for e in events if e.HasField("audio")]
        assert len(clauses) >= 6
        assert clauses[0].text == "The capital of France is Paris."
        assert len({c.clause_index for c in clauses}) >= 3
        words, phonemes = check_timeline(events)
        expected = [w.strip(".,") for w in REPLY.split()]
        assert [w.word for w in words] == expected
        done = events[-1].done
        assert done.clauses == len({c.clause_index for c in clauses})
        assert 0 < done.first_audio_ms < 1000
        samples = sum(len(pcm16_to_float(c.audio.data)) for c in clauses)
        assert clauses[0].audio.sample_rate == 24_000
        assert abs(done.audio_duration_us - samples * 1e6 / 24_000) < 100
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"http://127.0.0.1:{app.metrics_port}/metrics")).text
        for stage in ("first_audio", "clause_synthesis"):
            assert f'parley_stage_latency_seconds_count{{service="tts",stage="{stage}"}}' in metrics


async def test_output_rate_speed_and_one_event_per_clause(tts_config, session_id):
    app = build_app(tts_config(frame_ms=0, warmup=False))
    async with app.running() as address, grpc.aio.insecure_channel(address) as channel:
        stub = tts_pb2_grpc.TtsStub(channel)
        normal, _ = await speak(stub, session_id, ["Hello there, how are you today? ", "I am fine."])
        fast, _ = await speak(
            stub, session_id, ["Hello there, how are you today? ", "I am fine."], sample_rate=16_000, speed=1.5
        )
        normal_ev = [e for _, e in normal]
        fast_ev = [e for _, e in fast]
        check_timeline(fast_ev)
        audio = [e.audio for e in fast_ev if e.HasField("audio")]
        assert len(audio) == fast_ev[-1].done.clauses == 3  # "Hello there," + rest of sentence + "I am fine."
        assert all(a.audio.sample_rate == 16_000 and a.words for a in audio)
        assert fast_ev[-1].done.audio_duration_us < 0.8 * normal_ev[-1].done.audio_duration_us


async def test_cancel_mid_stream_stops_promptly(tts_config, session_id):
    app = build_app(tts_config(warmup=False))
    async with app.running() as address, grpc.aio.insecure_channel(address) as channel:
        stub = tts_pb2_grpc.TtsStub(channel)
        backend = app.servicer.backend
        calls = []
        synthesize = backend.synthesize
        backend.synthesize = lambda *a, **kw: calls.append(a) or synthesize(*a, **kw)
        call = stub.Synthesize()
        await call.write(start(session_id))
        await call.write(text("This is one of forty sentences. " * 40))
        first = await call.read()
        assert first.HasField("audio")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call.read()
        for _ in range(100):  # the server side ends too (its stream slot is released)
            if app._active == 0:
                break
            await asyncio.sleep(0.02)
        assert app._active == 0
        spoken = len(calls)
        await asyncio.sleep(0.5)  # 40 clauses would take about 1 s to synthesize: none more may start
        assert len(calls) == spoken < 10
        # The service keeps working for the next stream.
        received, _ = await speak(stub, session_id, ["Still here."])
        assert received[-1][1].done.clauses == 1


async def test_bad_input_is_rejected_while_good_streams_complete(tts_config, session_id):
    app = build_app(tts_config(max_text_chars=2000, warmup=False))
    bad_cases = [
        ([text("hello")], grpc.StatusCode.INVALID_ARGUMENT, "first message must be TtsStart"),
        ([], grpc.StatusCode.INVALID_ARGUMENT, "first message must be TtsStart"),
        ([start("no-such-session")], grpc.StatusCode.NOT_FOUND, "unknown session_id"),
        ([start("bad id!")], grpc.StatusCode.INVALID_ARGUMENT, "session_id must be"),
        ([start(session_id, voice="emma")], grpc.StatusCode.INVALID_ARGUMENT, "not installed"),
        ([start(session_id, voice="nobody")], grpc.StatusCode.INVALID_ARGUMENT, "unknown voice"),
        ([start(session_id, speed=5.0)], grpc.StatusCode.INVALID_ARGUMENT, "speed 5 is outside 0.5..2"),
        ([start(session_id, speed=-1.0)], grpc.StatusCode.INVALID_ARGUMENT, "speed"),
        ([start(session_id, sample_rate=1000)], grpc.StatusCode.INVALID_ARGUMENT, "sample_rate 1000"),
        ([start(session_id), text("word " * 500)], grpc.StatusCode.INVALID_ARGUMENT, "limit of 2000 characters"),
        ([start(session_id), start(session_id)], grpc.StatusCode.INVALID_ARGUMENT, "only be sent once"),
        ([start(session_id), tts_pb2.TtsRequest()], grpc.StatusCode.INVALID_ARGUMENT, "empty TtsRequest"),
    ]

    async def bad(stub, requests, code, message):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Synthesize(iter([*requests, FLUSH] if requests else [])):
                pass
        assert err.value.code() == code, (requests, err.value.details())
        assert message in err.value.details()

    async with app.running() as address, grpc.aio.insecure_channel(address) as channel:
        stub = tts_pb2_grpc.TtsStub(channel)
        good = asyncio.create_task(speak(stub, session_id, tokens(REPLY), delay=0.01))
        await asyncio.gather(*(bad(stub, *case) for case in bad_cases))
        received, _ = await good
        words, _ = check_timeline([e for _, e in received])
        assert len(words) == len(REPLY.split())
        # and a fresh good stream after all the failures
        again, _ = await speak(stub, session_id, ["Fine, thank you."])
        assert again[-1][1].done.clauses == 2


async def test_empty_and_whitespace_only_text(tts_config, session_id):
    app = build_app(tts_config(warmup=False))
    async with app.running() as address, grpc.aio.insecure_channel(address) as channel:
        stub = tts_pb2_grpc.TtsStub(channel)
        received, _ = await speak(stub, session_id, ["", "  ", "\n", "**", "😀"])
        assert len(received) == 1
        done = received[0][1].done
        assert (done.clauses, done.audio_duration_us, done.first_audio_ms) == (0, 0, 0.0)
