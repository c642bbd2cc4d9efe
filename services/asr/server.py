"""The ``parley.v1.Asr`` gRPC servicer and :func:`build_app`.

Stream protocol (``Transcribe``):

1. The first message must be ``AsrStart`` (else INVALID_ARGUMENT); its session must exist (NOT_FOUND).
2. ``AudioFrame``s at any 8-48 kHz rate (PCM16 or float32) are resampled to 16 kHz and appended to the
   current utterance on the session clock (``timestamp_us``; 0 = right after the previous frame).
3. ``AsrControl``: SPEECH_ENDED starts an early final decode, SPEECH_RESUMED discards it, FINALIZE emits
   ``final`` (reusing the early decode when it covers the audio) and starts the next utterance at
   ``at_us``, RESET drops the utterance.
4. With ``AsrStart.partials`` the server emits ``partial`` transcripts while audio arrives.

Malformed input ends only that stream, with INVALID_ARGUMENT and a message saying what was wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from parley.audio import decode_frame
from parley.bootstrap import ServiceApp
from parley.errors import InvalidInput
from parley.log import bind, unbind
from parley.v1 import asr_pb2, asr_pb2_grpc, common_pb2

from .backends import AsrBackend, make_backend
from .config import AsrServiceConfig, load_asr_config
from .decoder import Decoder, Priority
from .utterance import StreamSettings, TranscriptEvent, UtteranceSession

log = logging.getLogger("parley.asr.server")

SERVICE_NAME = asr_pb2.DESCRIPTOR.services_by_name["Asr"].full_name
_END = object()

Control = asr_pb2.AsrControl


def to_proto(event: TranscriptEvent) -> asr_pb2.Transcript:
    """A :class:`TranscriptEvent` as a ``parley.v1.Transcript``."""
    return asr_pb2.Transcript(
        text=event.text,
        words=[
            common_pb2.WordTiming(word=w.word, start_us=w.start_us, end_us=w.end_us, confidence=w.confidence)
            for w in event.words
        ],
        audio_start_us=event.audio_start_us,
        audio_end_us=event.audio_end_us,
        compute_ms=event.compute_ms,
        utterance_index=event.utterance_index,
        language=event.language,
        reused_early_decode=event.reused_early_decode,
    )


class AsrServicer(asr_pb2_grpc.AsrServicer):
    """Streaming recognition; one :class:`UtteranceSession` per call, one shared :class:`Decoder`."""

    def __init__(self, app: ServiceApp, config: AsrServiceConfig, decoder: Decoder) -> None:
        self.app = app
        self.config = config
        self.decoder = decoder

    async def Transcribe(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[asr_pb2.AsrRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[asr_pb2.AsrEvent]:
        async for event in self.app.stream("Transcribe", context, lambda: self._transcribe(request_iterator)):
            yield event

    def stream_settings(self, start: asr_pb2.AsrStart) -> StreamSettings:
        """Service config merged with an ``AsrStart`` (validated)."""
        cfg = self.config
        language = (start.language or cfg.language).strip().lower()
        self.decoder.backend.check_language(language)
        interval = start.partial_interval_ms or cfg.partial_interval_ms
        return StreamSettings(
            language=language,
            partials=start.partials,
            partial_interval_ms=max(interval, cfg.min_partial_interval_ms),
            word_timestamps=cfg.word_timestamps,
            partial_word_timestamps=cfg.partial_word_timestamps,
            pad_ms=cfg.early_final_pad_ms,
            early_tolerance_ms=cfg.early_final_tolerance_ms,
            preroll_ms=cfg.speech_preroll_ms,
            silence_dbfs=cfg.silence_dbfs,
            max_utterance_s=cfg.max_utterance_s,
            pause_decode=cfg.pause_decode,
            pause_tail_ms=cfg.pause_tail_ms,
        )

    async def _transcribe(self, requests: AsyncIterator[asr_pb2.AsrRequest]) -> AsyncIterator[asr_pb2.AsrEvent]:
        it = aiter(requests)
        try:
            first = await anext(it)
        except StopAsyncIteration:
            raise InvalidInput("empty stream: the first message must be AsrStart") from None
        if first.WhichOneof("payload") != "start":
            raise InvalidInput(
                f"the first message must be AsrStart, got {first.WhichOneof('payload') or 'an empty request'}"
            )
        start = first.start
        await self.app.check_session(start.session.session_id)
        settings = self.stream_settings(start)
        trace_id = start.session.trace_id
        token = bind(session_id=start.session.session_id, trace_id=trace_id)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        language = settings.language

        async def decode(samples: Any, word_timestamps: bool, priority: Priority) -> Any:
            return await self.decoder.decode(samples, language, word_timestamps, priority)

        session = UtteranceSession(decode, queue.put_nowait, settings)
        pump = asyncio.create_task(self._pump(it, session, queue))
        log.info("stream started", extra={"partials": settings.partials, "language": language})
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                transcript = to_proto(item)
                if item.final:
                    yield asr_pb2.AsrEvent(trace_id=trace_id, final=transcript)
                else:
                    yield asr_pb2.AsrEvent(trace_id=trace_id, partial=transcript)
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            await session.close()
            log.info("stream ended", extra={"finals": session.utterance_index})
            with contextlib.suppress(ValueError):
                unbind(token)

    async def _pump(
        self, it: AsyncIterator[asr_pb2.AsrRequest], session: UtteranceSession, queue: asyncio.Queue[Any]
    ) -> None:
        """Apply incoming messages to the session in order; errors end the stream via the queue."""
        try:
            async for request in it:
                kind = request.WhichOneof("payload")
                if kind == "audio":
                    session.push_audio(decode_frame(request.audio))
                elif kind == "control":
                    await self._control(session, request.control)
                elif kind == "start":
                    raise InvalidInput("AsrStart may only be sent once, as the first message")
                else:
                    raise InvalidInput("empty AsrRequest: set one of start, audio or control")
            queue.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            queue.put_nowait(exc)

    @staticmethod
    async def _control(session: UtteranceSession, control: asr_pb2.AsrControl) -> None:
        at_us = control.at_us
        if at_us < 0:
            raise InvalidInput(f"AsrControl.at_us must not be negative, got {at_us}")
        if control.kind == Control.SPEECH_ENDED:
            session.speech_ended(at_us)
        elif control.kind == Control.FINALIZE:
            await session.finalize(at_us)
        elif control.kind == Control.SPEECH_RESUMED:
            session.speech_resumed(at_us)
        elif control.kind == Control.RESET:
            session.reset()
        else:
            raise InvalidInput(f"unknown AsrControl kind {control.kind}")


def build_app(config: AsrServiceConfig | None = None, backend: AsrBackend | None = None) -> ServiceApp:
    """The ASR service: gRPC ``parley.v1.Asr`` + health + metrics; the model loads (and is warmed up)
    before the service reports SERVING. ``backend`` overrides the configured one (tests, embedding)."""
    config = config or load_asr_config()
    app = ServiceApp("asr", config.server)
    decoder = Decoder(backend or make_backend(config))
    servicer = AsrServicer(app, config, decoder)
    app.add_service(SERVICE_NAME, asr_pb2_grpc.add_AsrServicer_to_server, servicer)

    async def load() -> None:
        await decoder.run_sync(decoder.backend.load)
        if config.warmup:
            await decoder.run_sync(decoder.backend.warmup)
        log.info("backend ready", extra={"backend": decoder.backend.name})

    async def close() -> None:
        await asyncio.to_thread(decoder.close)

    app.on_startup(load)
    app.on_shutdown(close)
    return app
