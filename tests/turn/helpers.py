"""Helpers for the turn service tests: building audio, framing it into requests, reading streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import grpc
import numpy as np

from parley.audio import encode_frame, resample
from parley.v1 import common_pb2, turn_pb2, turn_pb2_grpc

NAN_F32 = np.array([0.0, np.nan, 0.0], dtype="<f4").tobytes()


def silence(seconds: float, rate: int = 16_000) -> np.ndarray:
    return np.zeros(int(round(seconds * rate)), np.float32)


def speech_bounds(samples: np.ndarray, rate: int, floor: float = 1e-3) -> tuple[float, float]:
    """(first, last) time in seconds where |sample| exceeds ``floor``."""
    idx = np.flatnonzero(np.abs(samples) > floor)
    return idx[0] / rate, (idx[-1] + 1) / rate


def trim(samples: np.ndarray, rate: int = 16_000) -> np.ndarray:
    """``samples`` without the leading and trailing digital silence the TTS adds."""
    first, last = speech_bounds(samples, rate)
    return samples[int(first * rate) : int(last * rate)]


def start_request(session_id: str, trace_id: str = "trace-1", **config: float) -> turn_pb2.TurnRequest:
    return turn_pb2.TurnRequest(
        start=turn_pb2.TurnStart(
            session=common_pb2.SessionRef(session_id=session_id, trace_id=trace_id),
            config=turn_pb2.TurnConfig(**config),
        )
    )


def audio_requests(samples: np.ndarray, rate: int, chunk_ms: int = 20, start_us: int = 0) -> list[turn_pb2.TurnRequest]:
    """PCM16 AudioFrames of ``chunk_ms`` each with session-clock timestamps."""
    step = rate * chunk_ms // 1000
    out = []
    for i in range(0, len(samples), step):
        ts = start_us + round(1e6 * i / rate)
        out.append(turn_pb2.TurnRequest(audio=encode_frame(samples[i : i + step], rate, ts)))
    return out


def raw_audio(data: bytes, rate: int = 16_000, encoding: int = 1, ts: int = 0) -> turn_pb2.TurnRequest:
    return turn_pb2.TurnRequest(
        audio=common_pb2.AudioFrame(data=data, sample_rate=rate, channels=1, encoding=encoding, timestamp_us=ts)
    )


@dataclass
class StreamResult:
    events: list[turn_pb2.TurnEvent] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)  # perf_counter per event
    sent_at: list[float] = field(default_factory=list)  # perf_counter per request sent
    code: grpc.StatusCode | None = None
    details: str = ""

    def kinds(self) -> list[str]:
        return [e.WhichOneof("event") for e in self.events]

    def of(self, kind: str) -> list[turn_pb2.TurnEvent]:
        return [e for e in self.events if e.WhichOneof("event") == kind]


async def run_stream(
    target: str,
    requests: Iterable[turn_pb2.TurnRequest],
    pace_s: float = 0.0,
    stop_after_eot: bool = False,
    deadline_s: float = 60.0,
) -> StreamResult:
    """Send ``requests`` (``pace_s`` apart after the first) and collect events until the server ends."""
    result = StreamResult()
    requests = list(requests)
    done = asyncio.Event()

    async def gen() -> AsyncIterator[turn_pb2.TurnRequest]:
        t0 = time.perf_counter()
        for i, req in enumerate(requests):
            if pace_s and i > 1:
                # pace against the wall clock so that processing time does not accumulate
                await asyncio.sleep(max(0.0, t0 + (i - 1) * pace_s - time.perf_counter()))
            result.sent_at.append(time.perf_counter())
            yield req
            if done.is_set():
                return

    async with grpc.aio.insecure_channel(target) as channel:
        stub = turn_pb2_grpc.TurnTakingStub(channel)
        call = stub.Detect(gen(), timeout=deadline_s)
        try:
            async for event in call:
                result.events.append(event)
                result.received_at.append(time.perf_counter())
                if stop_after_eot and event.WhichOneof("event") == "end_of_turn":
                    done.set()
                    call.cancel()
                    break
        except grpc.aio.AioRpcError as err:
            result.code, result.details = err.code(), err.details() or ""
    return result


def to_48k(samples16: np.ndarray) -> np.ndarray:
    return resample(samples16, 16_000, 48_000)


def word_gaps(samples: np.ndarray, rate: int, lo_s: float, hi_s: float, floor_db: float = -45.0) -> list[int]:
    """Sample indices where a quiet stretch (a gap between words) begins, between ``lo_s`` and ``hi_s``."""
    hop = rate // 50  # 20 ms
    n = len(samples) // hop
    level = np.array(
        [20 * np.log10(max(float(np.sqrt(np.mean(samples[i * hop : (i + 1) * hop] ** 2))), 1e-6)) for i in range(n)]
    )
    quiet = level < floor_db
    return [i * hop for i in range(1, n) if quiet[i] and not quiet[i - 1] and lo_s <= i * hop / rate <= hi_s]


class ConstantModel:
    """An end-of-turn model that always answers ``probability`` (optionally after ``delay_s``)."""

    sample_rate = 16_000
    window_samples = 128_000

    def __init__(self, probability: float, delay_s: float = 0.0, fail: bool = False) -> None:
        self.probability, self.delay_s, self.fail = probability, delay_s, fail
        self.calls: list[int] = []

    def predict(self, audio: np.ndarray) -> float:
        self.calls.append(len(audio))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("model exploded")
        return self.probability

    async def wait_ready(self) -> None:
        return None

    def close(self) -> None:
        return None
