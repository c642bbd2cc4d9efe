"""gRPC TurnTaking servicer and :func:`build_app`.

``Detect`` protocol: the first TurnRequest carries a TurnStart (session id, trace id, optional
TurnConfig); then AudioFrames at any rate 8-48 kHz (resampled to 16 kHz). The server streams
TurnEvents stamped with the session clock and the TurnStart's trace id. Malformed input aborts the
stream with INVALID_ARGUMENT (unknown session: NOT_FOUND) and a message; other streams are unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np

from parley import metrics
from parley.audio import Audio, StreamResampler, decode_frame
from parley.bootstrap import ServiceApp
from parley.errors import BackendUnavailable, InvalidInput
from parley.log import bind, unbind
from parley.v1 import turn_pb2, turn_pb2_grpc
from services.turn.backends import build_end_of_turn, build_vad
from services.turn.backends.base import EndOfTurnModel, VadModel
from services.turn.config import DetectorConfig, TurnServiceConfig
from services.turn.detector import (
    DetectorParams,
    EndOfTurnEvent,
    Event,
    PredictionEvent,
    SpeechStartedEvent,
    SpeechStoppedEvent,
)
from services.turn.session import SAMPLE_RATE, TurnSession

log = logging.getLogger("parley.turn")

SERVICE_NAME = "parley.v1.TurnTaking"
METHOD = "Detect"


def resolve_params(defaults: DetectorConfig, config: turn_pb2.TurnConfig) -> DetectorParams:
    """Stream parameters: each non-zero TurnConfig field overrides the service default."""
    vad_stop_ms = config.vad_stop_ms or defaults.vad_stop_ms
    return DetectorParams(
        vad_threshold=config.vad_threshold or defaults.vad_threshold,
        vad_negative_offset=defaults.vad_negative_offset,
        min_speech_ms=config.min_speech_ms or defaults.min_speech_ms,
        vad_stop_ms=vad_stop_ms,
        end_of_turn_threshold=config.end_of_turn_threshold or defaults.end_of_turn_threshold,
        silence_timeout_ms=config.silence_timeout_ms or defaults.silence_timeout_ms,
        pre_speech_ms=defaults.pre_speech_ms,
        speculative_ms=min(defaults.speculative_ms, vad_stop_ms),
    ).validate()


def to_proto(event: Event, trace_id: str) -> turn_pb2.TurnEvent:
    """A detector event as a TurnEvent."""
    out = turn_pb2.TurnEvent(timestamp_us=event.timestamp_us, trace_id=trace_id)
    if isinstance(event, SpeechStartedEvent):
        out.speech_started.speech_start_us = event.speech_start_us
    elif isinstance(event, SpeechStoppedEvent):
        out.speech_stopped.speech_end_us = event.speech_end_us
    elif isinstance(event, PredictionEvent):
        out.prediction.CopyFrom(
            turn_pb2.TurnPrediction(
                probability=event.probability, complete=event.complete, inference_ms=event.inference_ms
            )
        )
    elif isinstance(event, EndOfTurnEvent):
        out.end_of_turn.CopyFrom(
            turn_pb2.EndOfTurn(
                probability=event.probability,
                speech_end_us=event.speech_end_us,
                reason=event.reason,
                inference_ms=event.inference_ms,
            )
        )
    else:  # pragma: no cover - EndOfTurnRequest never leaves TurnSession
        raise TypeError(f"not a stream event: {event!r}")
    return out


class Models:
    """The loaded models and the worker threads of one process."""

    def __init__(self, config: TurnServiceConfig) -> None:
        self.config = config
        self.vad: VadModel | None = None
        self.end_of_turn: EndOfTurnModel | None = None
        self.executor = ThreadPoolExecutor(config.end_of_turn.workers, thread_name_prefix="turn-eot")

    async def load(self) -> None:
        """Load both models (and warm them up, or wait for Triton) off the event loop."""
        self.vad = await asyncio.to_thread(build_vad, self.config.vad)
        self.end_of_turn = await asyncio.to_thread(build_end_of_turn, self.config.end_of_turn)
        await self.end_of_turn.wait_ready()
        if self.config.warmup:
            await asyncio.to_thread(self._warmup)

    def _warmup(self) -> None:
        assert self.vad is not None and self.end_of_turn is not None
        stream = self.vad.stream()
        for _ in range(3):
            stream(np.zeros(self.vad.frame_samples, np.float32))
        self.end_of_turn.predict(np.zeros(SAMPLE_RATE, np.float32))

    async def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        for model in (self.vad, self.end_of_turn):
            if model is not None:
                model.close()


class TurnTakingServicer(turn_pb2_grpc.TurnTakingServicer):
    """Implements ``parley.v1.TurnTaking``."""

    def __init__(self, app: ServiceApp, config: TurnServiceConfig, models: Models) -> None:
        self.app = app
        self.config = config
        self.models = models

    async def Detect(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[turn_pb2.TurnRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[turn_pb2.TurnEvent]:
        async for event in self.app.stream(METHOD, context, lambda: self._detect(request_iterator)):
            yield event

    async def _detect(self, requests: AsyncIterator[turn_pb2.TurnRequest]) -> AsyncIterator[turn_pb2.TurnEvent]:
        it = aiter(requests)
        try:
            first = await anext(it)
        except StopAsyncIteration:
            raise InvalidInput("the stream ended before its TurnStart") from None
        _count_in()
        if first.WhichOneof("payload") != "start":
            raise InvalidInput("the first TurnRequest must be a TurnStart (session and config), not audio")
        ref = first.start.session
        await self.app.check_session(ref.session_id)
        params = resolve_params(self.config.detector, first.start.config)
        if self.models.vad is None or self.models.end_of_turn is None:
            raise BackendUnavailable("the turn service is still loading its models; retry when it reports SERVING")
        token = bind(session_id=ref.session_id, trace_id=ref.trace_id)
        session = TurnSession(
            self.models.vad.stream(),
            self.models.end_of_turn,
            params,
            self.models.executor,
            self.config.detector.model_wait_ms,
        )
        reader = asyncio.create_task(self._read(it, session))
        log.info("detect started", extra={"params": params.__dict__})
        try:
            while (event := await session.next_event()) is not None:
                yield to_proto(event, ref.trace_id)
        finally:
            reader.cancel()
            session.close()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            log.info("detect ended", extra={"frames": session.frames, "turns": session.detector.turns})
            unbind(token)

    @staticmethod
    async def _read(it: AsyncIterator[turn_pb2.TurnRequest], session: TurnSession) -> None:
        """Feed audio into the session; end its events at half-close, or with the first error."""
        resampler = StreamResampler(SAMPLE_RATE)  # seamless across frames (one-shot per frame would click)
        try:
            async for request in it:
                _count_in()
                kind = request.WhichOneof("payload")
                if kind == "start":
                    raise InvalidInput("TurnStart may only be sent once, as the first message")
                if kind != "audio":
                    raise InvalidInput("a TurnRequest must carry audio after the TurnStart")
                audio = decode_frame(request.audio)
                samples = resampler.push(audio.samples, audio.sample_rate)
                await session.push(Audio(samples, SAMPLE_RATE, audio.timestamp_us))
            await session.finish()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # delivered to the response generator, which aborts the call
            session.fail(exc)


def _count_in() -> None:
    metrics.STREAM_MESSAGES.labels(metrics.service_name(), METHOD, "in").inc()


def build_app(config: TurnServiceConfig) -> ServiceApp:
    """The turn service: TurnTaking servicer, models loaded (and warmed up) before SERVING."""
    app = ServiceApp("turn", config.server)
    models = Models(config)
    app.add_service(
        SERVICE_NAME, turn_pb2_grpc.add_TurnTakingServicer_to_server, TurnTakingServicer(app, config, models)
    )
    app.on_startup(models.load)
    app.on_shutdown(models.close)
    app.models = models  # type: ignore[attr-defined]  # for tests and embedding
    return app
