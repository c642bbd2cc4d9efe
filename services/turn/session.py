"""One Detect stream's pipeline: decoded audio -> 512-sample frames -> VAD -> detector -> model thread.

:class:`TurnSession` is transport-agnostic (no gRPC): push decoded 16 kHz audio with
:meth:`TurnSession.push`, read detector events from :meth:`TurnSession.next_event`. VAD runs inline
(~0.1-0.5 ms per 32 ms frame); the end-of-turn model runs in a thread pool so other sessions and this
session's audio keep flowing.

Timing rule: frames more than ``model_wait_ms`` of audio past a pending end-of-turn request wait for
its answer before they are processed. Real-time streams never wait (the answer comes in ~50 ms), and a
stream sent faster than real time gets the same decisions as the same audio sent in real time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import Executor

import numpy as np

from parley import metrics
from parley.audio import Audio, Framer
from parley.errors import InvalidInput
from services.turn.backends.base import EndOfTurnModel, VadStream
from services.turn.detector import (
    DetectorParams,
    EndOfTurnEvent,
    EndOfTurnRequest,
    Event,
    SpeechStoppedEvent,
    TurnDetector,
)

log = logging.getLogger("parley.turn.session")

SAMPLE_RATE = 16_000
FRAME_SAMPLES = 512
_DONE = object()


def _timed_predict(model: EndOfTurnModel, audio: np.ndarray) -> tuple[float, float]:
    """Run the model (in a worker thread); returns (probability, seconds spent)."""
    start = time.perf_counter()
    prob = model.predict(audio)
    return prob, time.perf_counter() - start


class TurnSession:
    """Turn detection state of one stream; all methods run on the event loop."""

    def __init__(
        self,
        vad: VadStream,
        model: EndOfTurnModel,
        params: DetectorParams,
        executor: Executor | None = None,
        model_wait_ms: int = 200,
    ) -> None:
        self.vad = vad
        self.model = model
        self.executor = executor
        self.detector = TurnDetector(params, FRAME_SAMPLES, SAMPLE_RATE)
        self.framer = Framer(FRAME_SAMPLES, SAMPLE_RATE)
        self.model_wait_us = model_wait_ms * 1000
        self._events: asyncio.Queue[object] = asyncio.Queue()
        self._inference: asyncio.Task[None] | None = None
        self._inference_ts = 0
        self._stop_wall = 0.0  # perf_counter() when the last SpeechStopped was produced
        self.decision_latencies: deque[float] = deque(maxlen=64)  # s, speech end -> EndOfTurn(model), last turns
        self._next_us: int | None = None  # session time right after the last pushed audio
        self.frames = 0

    # -- input -----------------------------------------------------------------------------------

    async def push(self, audio: Audio) -> None:
        """Add decoded mono 16 kHz audio (its ``timestamp_us`` on the session clock)."""
        if audio.sample_rate != SAMPLE_RATE:
            raise ValueError(f"TurnSession takes {SAMPLE_RATE} Hz audio, got {audio.sample_rate}")
        if audio.timestamp_us < 0:
            raise InvalidInput(f"audio timestamp_us must not be negative, got {audio.timestamp_us}")
        if audio.timestamp_us == 0 and self._next_us is not None:
            # An unset timestamp continues the clock from the previous chunk.
            audio = Audio(audio.samples, audio.sample_rate, self._next_us)
        self._next_us = audio.end_us
        for frame in self.framer.push(audio):
            await self._process(frame)

    async def finish(self) -> None:
        """The input ended: let a running model call report, then end the event stream."""
        if self._inference is not None:
            await asyncio.shield(self._inference)
        self._events.put_nowait(_DONE)

    def fail(self, exc: BaseException) -> None:
        """End the event stream with ``exc`` (raised by :meth:`next_event`)."""
        self._events.put_nowait(exc)

    def close(self) -> None:
        """Drop a running model call (the stream is gone)."""
        if self._inference is not None and not self._inference.done():
            self._inference.cancel()

    # -- output ----------------------------------------------------------------------------------

    async def next_event(self) -> Event | None:
        """The next event; None when the stream has ended; raises what :meth:`fail` was given."""
        item = await self._events.get()
        if item is _DONE:
            return None
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[return-value]

    # -- internals -------------------------------------------------------------------------------

    async def _process(self, frame: Audio) -> None:
        if (
            self._inference is not None
            and not self._inference.done()
            and frame.timestamp_us >= self._inference_ts + self.model_wait_us
        ):
            await asyncio.shield(self._inference)
        start = time.perf_counter()
        prob = self.vad(frame.samples)
        metrics.observe("vad_frame", time.perf_counter() - start)
        self.frames += 1
        self._emit(self.detector.push(frame.samples, frame.timestamp_us, prob))

    def _emit(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, EndOfTurnRequest):
                self._start_inference(event)
                continue
            if isinstance(event, SpeechStoppedEvent):
                self._stop_wall = time.perf_counter()
            elif isinstance(event, EndOfTurnEvent) and event.reason == "model":
                self._observe_decision(event)
            self._events.put_nowait(event)

    def _start_inference(self, request: EndOfTurnRequest) -> None:
        self._inference_ts = request.timestamp_us
        self._inference = asyncio.create_task(self._infer(request))

    async def _infer(self, request: EndOfTurnRequest) -> None:
        loop = asyncio.get_running_loop()
        try:
            prob, seconds = await loop.run_in_executor(self.executor, _timed_predict, self.model, request.audio)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("end-of-turn model failed; the silence timeout will close the turn", extra={"error": str(exc)})
            self._emit(self.detector.on_prediction_failed(request.request_id))
            return
        metrics.observe("end_of_turn_inference", seconds)
        self._emit(self.detector.on_prediction(request.request_id, prob, seconds * 1000))

    def _observe_decision(self, event: EndOfTurnEvent) -> None:
        """User stopped speaking -> decision: the audio waited for (about vad_stop_ms) + the time from
        the SpeechStopped frame to the answer (0 when a speculative answer was already there).

        Exact for real-time streams; for faster-than-real-time input it is the latency the same audio
        would have had in real time.
        """
        audio_lag = (event.timestamp_us - event.speech_end_us) / 1e6
        latency = audio_lag + time.perf_counter() - self._stop_wall
        self.decision_latencies.append(latency)
        metrics.observe("end_of_turn_decision", latency)
