"""Run one spoken turn through the stage services: audio in (paced in real time), reply audio out."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parley.audio import Audio, resample, write_wav
from parley.session_store import SessionStore
from services.orchestrator import (
    Conversation,
    OrchestratorConfig,
    ReplyAudio,
    ReplyDone,
    ReplyInterrupted,
    StageEndpoints,
    StageFailed,
    UserTranscript,
)
from services.orchestrator.clients import StageClients

CHUNK_S = 0.02


@dataclass
class TurnResult:
    """What one turn produced."""

    session_id: str
    transcript: str = ""
    reply_text: str = ""
    latency: dict[str, float] = field(default_factory=dict)
    reply_audio: Audio | None = None
    words: list[tuple[str, float, float]] = field(default_factory=list)  # (word, start_s, end_s) on the reply
    phonemes: list[tuple[str, float, float]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "transcript": self.transcript,
            "reply_text": self.reply_text,
            "reply_audio_s": round(self.reply_audio.duration_s, 3) if self.reply_audio else 0.0,
            "latency_ms": self.latency,
            "error": self.error,
        }


def assemble(chunks: list[ReplyAudio]) -> Audio | None:
    """Lay reply audio chunks on their timeline (by offset) into one signal."""
    if not chunks:
        return None
    rate = chunks[0].audio.sample_rate
    end = max(round(c.offset_us * rate / 1e6) + len(c.audio.samples) for c in chunks)
    out = np.zeros(end, np.float32)
    for c in chunks:
        samples = resample(c.audio.samples, c.audio.sample_rate, rate)
        start = round(c.offset_us * rate / 1e6)
        out[start:start + len(samples)] = samples
    return Audio(out, rate)


async def paced_feed(conv: Conversation, audio: Audio, stop: asyncio.Event, tail_s: float = 20.0) -> None:
    """Push ``audio`` in 20 ms chunks at real-time pace, then silence until ``stop`` (or ``tail_s``)."""
    step = round(CHUNK_S * audio.sample_rate)
    start = time.monotonic()
    n = 0
    total = len(audio.samples) + round(tail_s * audio.sample_rate)
    while n * step < total and not stop.is_set():
        lo = n * step
        chunk = audio.samples[lo:lo + step] if lo < len(audio.samples) else np.zeros(0, np.float32)
        if len(chunk) < step:
            chunk = np.concatenate([chunk, np.zeros(step - len(chunk), np.float32)])
        await conv.push_audio(Audio(chunk, audio.sample_rate))
        n += 1
        await asyncio.sleep(max(0.0, start + n * CHUNK_S - time.monotonic()))


async def converse_once(
    endpoints: dict[str, str],
    redis_url: str,
    audio: Audio,
    config: OrchestratorConfig | None = None,
    timeout_s: float = 60.0,
) -> TurnResult:
    """Stream ``audio`` as the user's speech and collect the replica's first complete reply."""
    config = (config or OrchestratorConfig()).model_copy(
        update={
            "endpoints": StageEndpoints(**{k: v for k, v in endpoints.items() if k in StageEndpoints.model_fields}),
            "redis_url": redis_url,
        }
    )
    clients = StageClients(config.endpoints)
    store = SessionStore(redis_url, ttl_s=config.session_ttl_s)
    conv = Conversation(clients, config, store)
    result = TurnResult(session_id="")
    chunks: list[ReplyAudio] = []
    done = asyncio.Event()
    try:
        await clients.wait_ready()
        result.session_id = await conv.start()

        async def collect() -> None:
            async for event in conv.events():
                if not isinstance(event, ReplyAudio):
                    result.events.append(event.to_dict())
                if isinstance(event, UserTranscript) and event.final and event.text:
                    result.transcript = event.text
                elif isinstance(event, ReplyAudio):
                    chunks.append(event)
                    result.words += [(w["word"], w["start_us"] / 1e6, w["end_us"] / 1e6) for w in event.words]
                    result.phonemes += [
                        (p["phoneme"], p["start_us"] / 1e6, p["end_us"] / 1e6) for p in event.phonemes
                    ]
                elif isinstance(event, ReplyDone):
                    result.reply_text, result.latency = event.reply_text, event.latency
                    done.set()
                elif isinstance(event, (StageFailed, ReplyInterrupted)):
                    result.error = f"{event.kind}: {event.to_dict()}"
                    done.set()

        collector = asyncio.create_task(collect())
        feeder = asyncio.create_task(paced_feed(conv, audio, done))
        try:
            await asyncio.wait_for(done.wait(), timeout_s)
        except TimeoutError:
            result.error = f"no reply within {timeout_s:.0f} s"
        feeder.cancel()
        await conv.close()
        await asyncio.gather(collector, feeder, return_exceptions=True)
    finally:
        await clients.close()
        await store.close()
    result.reply_audio = assemble(chunks)
    return result


def save_reply(result: TurnResult, out: str | Path, replica: str | None = None) -> Path | None:
    """Write the reply: ``.mp4`` renders the replica speaking it (H.264 + AAC, lips from the TTS timings),
    anything else is written as a WAV of the reply audio."""
    if result.reply_audio is None:
        return None
    audio = result.reply_audio
    if str(out).lower().endswith(".mp4"):
        from services.renderer.mp4 import render_reply_mp4

        return render_reply_mp4(replica, audio.samples, audio.sample_rate, result.words, result.phonemes, out)
    return write_wav(out, audio.samples, audio.sample_rate)
