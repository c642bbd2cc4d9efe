"""The ``parley.v1.Tts`` servicer and :func:`build_app`.

Stream contract (``Synthesize``, bidirectional):

1. The first request must be ``TtsStart`` (else INVALID_ARGUMENT); its session must exist (NOT_FOUND).
   ``voice`` "" = the configured default; an unknown or not-installed voice, a ``speed`` outside
   ``min_speed..max_speed`` (0 = default) or a ``sample_rate`` outside 8-48 kHz (0 = native, 24 kHz for
   hibari) is INVALID_ARGUMENT.
2. ``TextPiece`` fragments (any size, whitespace-only is fine) are buffered and cut into clauses by
   :class:`services.tts.chunker.ClauseChunker`. A background task reads requests, so text keeps being
   accepted while a clause is synthesized on the worker threads. More than ``max_text_chars`` in one
   stream is INVALID_ARGUMENT.
3. Each clause's audio goes out as ``SpeechAudio`` events of ``frame_ms`` (default 200 ms; 0 = one per
   clause), PCM16 mono. ``audio.timestamp_us`` is the offset from the start of this stream's speech,
   continuous across clauses. A clause's word and phoneme timings (stream-relative, same timeline) are
   all carried by its *first* event - a renderer gets the whole clause as look-ahead; later events of
   that clause carry audio only (same ``text`` and ``clause_index``).
4. ``TtsFlush`` (or the client half-closing) synthesizes what is buffered, sends ``SynthesisDone``
   (clauses, audio_duration_us, first_audio_ms = first non-blank text received -> first audio sent) and
   ends the stream. Cancelling the call stops the stream at once (a clause already running on a
   worker finishes there, and its result is dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from parley.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, encode_frame, resample
from parley.bootstrap import ServiceApp
from parley.errors import InvalidInput
from parley.metrics import observe
from parley.v1 import common_pb2, tts_pb2, tts_pb2_grpc
from services.tts.backends import Synthesis, TtsBackend, make_backend
from services.tts.chunker import ChunkerLimits, ClauseChunker
from services.tts.config import TtsServiceConfig

log = logging.getLogger("parley.tts")

SERVICE_NAME = tts_pb2.DESCRIPTOR.services_by_name["Tts"].full_name
_END = object()


@dataclass(frozen=True)
class StreamParams:
    """What a ``TtsStart`` resolved to."""

    session_id: str
    voice: str
    speed: float
    sample_rate: int


@dataclass
class _StreamState:
    params: StreamParams
    chunker: ClauseChunker
    chars: int = 0
    first_text: float | None = None
    first_audio: float | None = None
    clauses: int = 0
    samples: int = 0
    error: BaseException | None = None
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)


class TtsServicer(tts_pb2_grpc.TtsServicer):
    """Implements ``Synthesize`` on top of one :class:`TtsBackend` shared by all streams."""

    def __init__(self, app: ServiceApp, config: TtsServiceConfig, backend: TtsBackend) -> None:
        self.app = app
        self.config = config
        self.backend = backend
        self.executor = ThreadPoolExecutor(config.synthesis_threads, thread_name_prefix="tts-synth")
        c = config.chunker
        self.limits = ChunkerLimits(
            c.first_max_words, c.first_min_words, c.min_clause_words, c.max_clause_words, c.max_clause_chars
        )

    # -- lifecycle ------------------------------------------------------------------------------
    async def startup(self) -> None:
        """Load (and warm up) the backend on a worker thread."""
        await asyncio.get_running_loop().run_in_executor(self.executor, self._load)

    def _load(self) -> None:
        self.backend.load()
        if self.config.warmup and self.config.backend == "hibari":
            t0 = time.perf_counter()
            self.backend.synthesize("Hello, this is a warm-up.", 1.0)
            log.info("warm", extra={"backend": self.backend.name, "ms": round(1e3 * (time.perf_counter() - t0))})

    async def shutdown(self) -> None:
        """Stop the worker threads and release the backend."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.backend.close()

    # -- RPC ------------------------------------------------------------------------------------
    async def Synthesize(
        self, request_iterator: AsyncIterator[tts_pb2.TtsRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.TtsEvent]:
        stream = self.app.stream("Synthesize", context, lambda: self._synthesize(request_iterator))
        try:
            async for event in stream:
                yield event
        finally:
            # When the call is cancelled while this generator waits at ``yield``, grpc drops it and Python
            # finalizes it later in another task: close the wrapped stream here, now, so the stream slot
            # and the reader task are released at once. Its log-context reset fails in a foreign context
            # (ValueError) - harmless, swallowed.
            with contextlib.suppress(ValueError):
                await stream.aclose()

    def resolve(self, start: tts_pb2.TtsStart) -> StreamParams:
        """Validate a ``TtsStart`` against the config and backend; raise InvalidInput with the reason."""
        cfg = self.config
        voice = self.backend.check_voice(start.voice)
        speed = float(start.speed) or cfg.speed
        if not math.isfinite(speed) or not cfg.min_speed <= speed <= cfg.max_speed:
            raise InvalidInput(f"speed {start.speed:g} is outside {cfg.min_speed:g}..{cfg.max_speed:g} (0 = default)")
        rate = start.sample_rate or cfg.sample_rate or self.backend.sample_rate
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise InvalidInput(f"sample_rate {rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz (0 = native)")
        return StreamParams(start.session.session_id, voice, speed, rate)

    async def _synthesize(self, requests: AsyncIterator[tts_pb2.TtsRequest]) -> AsyncIterator[tts_pb2.TtsEvent]:
        it = requests.__aiter__()
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            raise InvalidInput("empty request stream: the first message must be TtsStart") from None
        kind = first.WhichOneof("payload")
        if kind != "start":
            raise InvalidInput(f"the first message must be TtsStart, got {kind or 'an empty TtsRequest'}")
        await self.app.check_session(first.start.session.session_id)
        state = _StreamState(self.resolve(first.start), ClauseChunker(self.limits))
        reader = asyncio.create_task(self._read(it, state))
        try:
            async for event in self._speak(state):
                yield event
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read(self, it: AsyncIterator[tts_pb2.TtsRequest], state: _StreamState) -> None:
        """Feed text into the chunker and queue clauses; queue _END after flush, or the error."""
        queue = state.queue
        try:
            async for request in it:
                kind = request.WhichOneof("payload")
                if kind == "text":
                    text = request.text.text
                    state.chars += len(text)
                    if state.chars > self.config.max_text_chars:
                        raise InvalidInput(
                            f"text exceeds the limit of {self.config.max_text_chars} characters per stream"
                        )
                    if state.first_text is None and text.strip():
                        state.first_text = time.monotonic()
                    for clause in state.chunker.push(text):
                        queue.put_nowait(clause)
                elif kind == "flush":
                    break
                elif kind == "start":
                    raise InvalidInput("TtsStart may only be sent once, as the first message")
                else:
                    raise InvalidInput("empty TtsRequest: set start, text or flush")
            for clause in state.chunker.flush():
                queue.put_nowait(clause)
            queue.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream body raises it before its next clause and aborts
            state.error = exc
            queue.put_nowait(_END)

    async def _speak(self, state: _StreamState) -> AsyncIterator[tts_pb2.TtsEvent]:
        loop = asyncio.get_running_loop()
        while True:
            item = await state.queue.get()
            if state.error is not None:  # bad input ends the stream before any clause still queued
                raise state.error
            if item is _END:
                break
            synthesis, seconds = await loop.run_in_executor(self.executor, self._render, item, state.params)
            if state.error is not None:
                raise state.error
            observe("clause_synthesis", seconds)
            if not len(synthesis.audio):
                continue
            for event in self._events(state, item, synthesis):
                yield event
                if state.first_audio is None:
                    state.first_audio = time.monotonic()
                    if state.first_text is not None:
                        observe("first_audio", state.first_audio - state.first_text)
            state.clauses += 1
        first_ms = 0.0
        if state.first_audio is not None and state.first_text is not None:
            first_ms = 1e3 * (state.first_audio - state.first_text)
        rate = state.params.sample_rate
        yield tts_pb2.TtsEvent(
            done=tts_pb2.SynthesisDone(
                clauses=state.clauses,
                audio_duration_us=round(state.samples * 1e6 / rate),
                first_audio_ms=first_ms,
            )
        )

    def _render(self, text: str, params: StreamParams) -> tuple[Synthesis, float]:
        """Worker thread: synthesize one clause and bring it to the stream's sample rate."""
        t0 = time.perf_counter()
        syn = self.backend.synthesize(text, params.speed, params.voice)
        if syn.sample_rate != params.sample_rate and len(syn.audio):
            syn = Synthesis(
                resample(syn.audio, syn.sample_rate, params.sample_rate), params.sample_rate, syn.words, syn.phonemes
            )
        return syn, time.perf_counter() - t0

    def _events(self, state: _StreamState, text: str, syn: Synthesis) -> list[tts_pb2.TtsEvent]:
        """SpeechAudio events for one clause, placed after the audio already sent on this stream."""
        rate = state.params.sample_rate
        offset_us = round(state.samples * 1e6 / rate)
        size = round(rate * self.config.frame_ms / 1000) if self.config.frame_ms else len(syn.audio)
        parts = np.array_split(syn.audio, max(1, round(len(syn.audio) / max(size, 1))))
        words = [
            common_pb2.WordTiming(
                word=w.label, start_us=w.start_us + offset_us, end_us=w.end_us + offset_us, confidence=1.0
            )
            for w in syn.words
        ]
        phonemes = [
            common_pb2.PhonemeTiming(phoneme=p.label, start_us=p.start_us + offset_us, end_us=p.end_us + offset_us)
            for p in syn.phonemes
        ]
        events = []
        for i, part in enumerate(parts):
            frame = encode_frame(part, rate, round(state.samples * 1e6 / rate))
            state.samples += len(part)
            speech = tts_pb2.SpeechAudio(audio=frame, text=text, clause_index=state.clauses)
            if i == 0:
                speech.words.extend(words)
                speech.phonemes.extend(phonemes)
            events.append(tts_pb2.TtsEvent(audio=speech))
        return events


def build_app(config: TtsServiceConfig) -> ServiceApp:
    """The TTS service: ``parley.v1.Tts`` on a :class:`ServiceApp`; the backend loads at start-up."""
    app = ServiceApp("tts", config.server)
    servicer = TtsServicer(app, config, make_backend(config))
    app.add_service(SERVICE_NAME, tts_pb2_grpc.add_TtsServicer_to_server, servicer)
    app.on_startup(servicer.startup)
    app.on_shutdown(servicer.shutdown)
    app.servicer = servicer  # type: ignore[attr-defined]  # handy for tests and embedding
    return app
