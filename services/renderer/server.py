"""The ``parley.v1.Renderer`` servicer and :func:`build_app`.

Stream contract (``Render``, bidirectional):

1. The first request must be ``RenderStart`` (else INVALID_ARGUMENT); its session must exist (NOT_FOUND).
   ``replica_id`` "" = the configured default; an unknown replica is NOT_FOUND, a corrupt one
   INVALID_ARGUMENT. ``size`` outside ``min_size..max_size``, ``fps`` outside ``1..max_fps``, an unknown
   pixel format, emotion or mode, or an intensity outside 0..1 is INVALID_ARGUMENT. More than
   ``max_sessions`` concurrent streams is RESOURCE_EXHAUSTED.
2. The server answers ``RenderReady`` and from then on streams ``RenderedFrame`` events at ``fps`` in
   real time (idle / listening frames while no speech plays).
3. ``RenderSpeech`` chunks (the TTS ``SpeechAudio`` plus an ``utterance_id``) are buffered and played out
   in real time: ``SpeechPlaybackStarted``, then per frame an ``AudioFrame`` (PCM16 at
   ``audio_sample_rate``, ``timestamp_us`` = the frame's ``pts_us``) before the frame it belongs to, then
   ``SpeechPlaybackFinished`` after the utterance's ``RenderSpeechEnd`` and last sample. Audio that is not
   valid (``decode_frame``: rate, encoding, NaN, oversized chunk) is INVALID_ARGUMENT.
4. ``RenderSetEmotion`` / ``RenderSetMode`` / ``RenderUserPaused`` change the face from the next frame.
   ``RenderClearBuffer`` stops speech at once: ``SpeechBufferCleared`` reports the last sample sent and
   the words played; no speech audio or speaking frame follows it.
5. Half-closing the request stream ends the call once queued speech has played; cancelling ends it now.

Scheduling (``scheduler: auto``): ``backend: cpu`` renders every session's frames on ``render_threads``
worker threads; ``backend: gsplat`` runs one shared render loop that batches all sessions' frames of a tick
into one ``FaceRenderer.render_batch`` call (:class:`services.renderer.schedulers.BatchScheduler`).
``scheduler: batch`` forces the batching loop for any backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from parley.bootstrap import ServiceApp
from parley.errors import InvalidInput, Overloaded
from parley.v1 import renderer_pb2, renderer_pb2_grpc
from services.renderer.config import RendererServiceConfig
from services.renderer.controls import Controls
from services.renderer.driving import DrivingOptions, VisemeOptions
from services.renderer.schedulers import BatchScheduler, FrameScheduler, ThreadScheduler
from services.renderer.session import PIXEL_FORMATS, RenderSession, SessionParams, parse_emotion, parse_mode

log = logging.getLogger("parley.renderer")

SERVICE_NAME = renderer_pb2.DESCRIPTOR.services_by_name["Renderer"].full_name
MAX_REPLICA_ID = 128


def driving_options(config: RendererServiceConfig, fps: int, seed: int = 0) -> DrivingOptions:
    d = config.driving
    return DrivingOptions(
        fps=fps, seed=seed,
        visemes=VisemeOptions(smooth_s=d.smooth_ms / 1000, lead_s=d.lead_ms / 1000, articulation=d.articulation),
        energy_weight=d.energy_weight, emotion_transition_s=d.emotion_transition_s,
        min_emotion_transition_s=d.min_emotion_transition_s,
    )


class ReplicaCache:
    """Replicas from the ReplicaStore at ``replica_dir`` ("" = ``default_replica``, or the built-in default
    astronaut replica, built into the store on first use). The store keeps loaded replicas in memory
    while their files are unchanged; a replica is immutable and shared by every session showing it."""

    def __init__(self, config: RendererServiceConfig) -> None:
        self.config = config
        self._store: Any = None

    @property
    def store(self) -> Any:
        if self._store is None:
            from services.renderer.replica import ReplicaStore

            self._store = ReplicaStore(self.config.replica_dir or None)
        return self._store

    def resolve_id(self, replica_id: str) -> str:
        from services.renderer.replica import DEFAULT_REPLICA_ID

        return replica_id or self.config.default_replica or DEFAULT_REPLICA_ID

    def get(self, replica_id: str) -> Any:
        """The replica (call on a worker thread); NotFound / InvalidInput from the store pass through."""
        key = replica_id or self.config.default_replica
        return self.store.get(key) if key else self.store.default()


class RendererServicer(renderer_pb2_grpc.RendererServicer):
    """Implements ``Render``: one :class:`RenderSession` per stream, one shared frame scheduler."""

    def __init__(self, app: ServiceApp, config: RendererServiceConfig) -> None:
        self.app = app
        self.config = config
        self.replicas = ReplicaCache(config)
        self.loader = ThreadPoolExecutor(1, thread_name_prefix="replica-load")
        self.active = 0
        self._seeds = itertools.count(config.driving.seed)
        self.scheduler: FrameScheduler = self._make_scheduler()
        self.sessions: list[RenderSession] = []  # live sessions (tests, introspection)

    def _make_scheduler(self) -> FrameScheduler:
        mode = self.config.scheduler
        if mode == "batch" or (mode == "auto" and self.config.backend == "gsplat"):
            def render_batch(items: list[tuple[Any, Controls]]) -> list[Any]:
                from services.renderer.face import FaceRenderer

                return FaceRenderer.render_batch(items)

            c = self.config
            return BatchScheduler(render_batch, c.batch_window_ms / 1000, c.max_batch, lambda: self.active)
        return ThreadScheduler(self.config.render_threads)

    # -- lifecycle ------------------------------------------------------------------------------
    async def startup(self) -> None:
        """Load the default replica and render one frame (first-call costs) before SERVING."""
        if not self.config.warmup:
            return
        t0 = time.perf_counter()
        renderer = await self._renderer("", self.config.size)
        await self.scheduler.render(renderer, Controls())
        log.info("warm", extra={"backend": self.config.backend, "ms": round(1e3 * (time.perf_counter() - t0))})

    async def shutdown(self) -> None:
        self.scheduler.close()
        self.loader.shutdown(wait=False, cancel_futures=True)

    def _make_renderer(self, replica_id: str, size: int) -> Any:
        from services.renderer.face import FaceRenderer

        replica = self.replicas.get(replica_id)
        return FaceRenderer(replica, size=size, backend=self.config.backend)

    async def _renderer(self, replica_id: str, size: int) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.loader, self._make_renderer, replica_id, size)

    # -- RPC ------------------------------------------------------------------------------------
    async def Render(
        self, request_iterator: AsyncIterator[renderer_pb2.RenderRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[renderer_pb2.RenderEvent]:
        stream = self.app.stream("Render", context, lambda: self._render(request_iterator))
        try:
            async for event in stream:
                yield event
        finally:
            with contextlib.suppress(ValueError):  # see TtsServicer.Synthesize: close the wrapped stream now
                await stream.aclose()

    def resolve(self, start: renderer_pb2.RenderStart) -> SessionParams:
        """Validate a ``RenderStart``; InvalidInput with the reason."""
        c = self.config
        size = start.size or c.size
        if not c.min_size <= size <= c.max_size:
            raise InvalidInput(f"size {start.size} is outside {c.min_size}..{c.max_size} (0 = default {c.size})")
        fps = start.fps or c.fps
        if not 1 <= fps <= c.max_fps:
            raise InvalidInput(f"fps {start.fps} is outside 1..{c.max_fps} (0 = default {c.fps})")
        if start.pixel_format not in PIXEL_FORMATS:
            raise InvalidInput(f"unknown pixel_format {start.pixel_format}")
        if len(start.replica_id) > MAX_REPLICA_ID:
            raise InvalidInput(f"replica_id is longer than {MAX_REPLICA_ID} characters")
        emotion, intensity = parse_emotion(start.emotion, start.emotion_intensity)
        return SessionParams(
            session_id=start.session.session_id, replica_id=start.replica_id, size=size, fps=fps,
            pixel_format=PIXEL_FORMATS[start.pixel_format], test_pattern=start.test_pattern, emotion=emotion,
            intensity=intensity, mode=parse_mode(start.mode), audio_rate=c.audio_sample_rate,
        )

    async def _render(self, requests: AsyncIterator[renderer_pb2.RenderRequest]) -> AsyncIterator[
            renderer_pb2.RenderEvent]:
        started_at = time.perf_counter()
        it = requests.__aiter__()
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            raise InvalidInput("empty request stream: the first message must be RenderStart") from None
        kind = first.WhichOneof("payload")
        if kind != "start":
            raise InvalidInput(f"the first message must be RenderStart, got {kind or 'an empty RenderRequest'}")
        await self.app.check_session(first.start.session.session_id)
        params = self.resolve(first.start)
        if self.active >= self.config.max_sessions:
            raise Overloaded(f"renderer is at its limit of {self.config.max_sessions} concurrent sessions")
        self.active += 1
        reader: asyncio.Task[None] | None = None
        session: RenderSession | None = None
        try:
            renderer = await self._renderer(params.replica_id, params.size)
            session = RenderSession(
                params, renderer, self.scheduler, driving_options(self.config, params.fps, next(self._seeds)),
                prebuffer_s=self.config.prebuffer_ms / 1000, max_buffer_s=self.config.max_buffer_s,
                pattern_period_s=self.config.test_pattern_period_s,
            )
            self.sessions.append(session)
            reader = asyncio.create_task(self._read(it, session))
            ready = renderer_pb2.RenderEvent(ready=renderer_pb2.RenderReady(
                replica_id=self.replicas.resolve_id(params.replica_id), width=params.size, height=params.size,
                fps=params.fps, pixel_format=params.pixel_format, audio_sample_rate=params.audio_rate))
            log.info("session started", extra={"session_id": params.session_id, "replica_id": params.replica_id,
                                               "size": params.size, "fps": params.fps})
            async for event in session.run(ready, started_at):
                yield event
        finally:
            self.active -= 1
            if session is not None:
                self.sessions.remove(session)
                log.info("session ended", extra={"session_id": params.session_id, "frames": session.frames_sent,
                                                 "dropped": session.frames_dropped})
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader

    async def _read(self, it: AsyncIterator[renderer_pb2.RenderRequest], session: RenderSession) -> None:
        try:
            async for request in it:
                session.handle(request)
            session.close_input()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the frame loop raises it: the stream aborts with its status
            session.fail(exc)


def build_app(config: RendererServiceConfig) -> ServiceApp:
    """The renderer service: ``parley.v1.Renderer`` on a :class:`ServiceApp`."""
    app = ServiceApp("renderer", config.server)
    servicer = RendererServicer(app, config)
    app.add_service(SERVICE_NAME, renderer_pb2_grpc.add_RendererServicer_to_server, servicer)
    app.on_startup(servicer.startup)
    app.on_shutdown(servicer.shutdown)
    app.servicer = servicer  # type: ignore[attr-defined]  # handy for tests and embedding
    return app
