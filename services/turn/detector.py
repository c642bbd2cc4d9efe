"""Per-session turn state machine: pure logic over (frame, speech probability) pairs, no models, no I/O.

Feed each 32 ms frame with its VAD probability to :meth:`TurnDetector.push`; it returns events. When a
pause is long enough it returns an :class:`EndOfTurnRequest` (audio for the end-of-turn model); the
caller runs the model (in a thread) and hands the result back to :meth:`TurnDetector.on_prediction`.
Frames keep flowing meanwhile; a result that arrives after speech resumed (or after the turn was
closed by the silence timeout) is stale and ignored.

States and transitions (times are session-clock microseconds of frame boundaries):

* idle / pause: ``min_speech_ms`` of consecutive frames with P >= ``vad_threshold`` ->
  :class:`SpeechStartedEvent` (``speech_start_us`` = start of the first of those frames). The first
  one of a turn also fixes the turn start.
* speech: a frame with P >= ``vad_threshold - vad_negative_offset`` extends the speech
  (``speech_end_us`` = its end); ``vad_stop_ms`` of frames below that -> :class:`SpeechStoppedEvent`.
  The :class:`EndOfTurnRequest` with the turn's audio (from ``pre_speech_ms`` before its start, at
  most the last 8 s) is issued ``speculative_ms`` earlier, so that the model's ~50 ms run overlaps
  the end of the wait; its answer counts only if the silence reaches ``vad_stop_ms``.
* pause: model result P >= ``end_of_turn_threshold`` -> :class:`PredictionEvent` and
  :class:`EndOfTurnEvent` (reason ``model``); lower -> :class:`PredictionEvent` (complete=False) and
  keep listening. Time since ``speech_end_us`` reaching ``silence_timeout_ms`` -> EndOfTurn (reason
  ``silence_timeout``). After EndOfTurn the next speech starts a new turn.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from parley.errors import InvalidInput

SAMPLE_RATE = 16_000
MAX_TURN_AUDIO_S = 8.0


@dataclass(frozen=True)
class DetectorParams:
    """Thresholds of one stream (service defaults overridden by the stream's TurnConfig)."""

    vad_threshold: float = 0.5
    vad_negative_offset: float = 0.15
    min_speech_ms: int = 120
    vad_stop_ms: int = 160
    end_of_turn_threshold: float = 0.5
    silence_timeout_ms: int = 1200
    pre_speech_ms: int = 500
    speculative_ms: int = 0

    def validate(self) -> DetectorParams:
        """Return self, or raise InvalidInput naming the first bad value."""
        for name in ("vad_threshold", "end_of_turn_threshold"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 < value <= 1.0):
                raise InvalidInput(f"turn config {name} must be in (0, 1], got {value}")
        if not (math.isfinite(self.vad_negative_offset) and 0.0 <= self.vad_negative_offset < 1.0):
            raise InvalidInput(f"turn config vad_negative_offset must be in [0, 1), got {self.vad_negative_offset}")
        limits = {"min_speech_ms": 5_000, "vad_stop_ms": 10_000, "silence_timeout_ms": 60_000, "pre_speech_ms": 8_000}
        for name, limit in limits.items():
            value = getattr(self, name)
            if not 0 <= value <= limit:
                raise InvalidInput(f"turn config {name} must be in 0..{limit}, got {value}")
        if not 0 <= self.speculative_ms <= self.vad_stop_ms:
            raise InvalidInput(f"turn config speculative_ms must be in 0..vad_stop_ms, got {self.speculative_ms}")
        if self.silence_timeout_ms <= 0:
            raise InvalidInput("turn config silence_timeout_ms must be positive")
        if self.vad_stop_ms > self.silence_timeout_ms:
            raise InvalidInput(
                f"turn config vad_stop_ms ({self.vad_stop_ms}) must not exceed "
                f"silence_timeout_ms ({self.silence_timeout_ms})"
            )
        return self

    @property
    def negative_threshold(self) -> float:
        """Below this a frame ends (counts as silence within) a speech segment."""
        return max(0.0, self.vad_threshold - self.vad_negative_offset)


@dataclass(frozen=True)
class SpeechStartedEvent:
    timestamp_us: int
    speech_start_us: int


@dataclass(frozen=True)
class SpeechStoppedEvent:
    timestamp_us: int
    speech_end_us: int


@dataclass(frozen=True)
class PredictionEvent:
    timestamp_us: int
    probability: float
    complete: bool
    inference_ms: float


@dataclass(frozen=True)
class EndOfTurnEvent:
    timestamp_us: int
    probability: float
    speech_end_us: int
    reason: str  # "model" | "silence_timeout"
    inference_ms: float


@dataclass(frozen=True)
class EndOfTurnRequest:
    """Ask the caller to run the end-of-turn model on ``audio`` and report back with ``request_id``."""

    request_id: int
    timestamp_us: int
    speech_end_us: int
    audio: np.ndarray = field(repr=False)


Event = SpeechStartedEvent | SpeechStoppedEvent | PredictionEvent | EndOfTurnEvent | EndOfTurnRequest


class _AudioHistory:
    """The last ``max_s`` seconds of frames with their start times, to cut a turn's audio from."""

    def __init__(self, max_s: float, frame_samples: int, sample_rate: int) -> None:
        self._frames: deque[tuple[int, np.ndarray]] = deque(
            maxlen=max(1, math.ceil(max_s * sample_rate / frame_samples))
        )

    def append(self, start_us: int, frame: np.ndarray) -> None:
        self._frames.append((start_us, frame))

    def since(self, start_us: int) -> np.ndarray:
        chunks = [f for t, f in self._frames if t >= start_us]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


class TurnDetector:
    """State machine of one stream. Not thread-safe: call from one task."""

    def __init__(self, params: DetectorParams, frame_samples: int = 512, sample_rate: int = SAMPLE_RATE) -> None:
        self.params = params.validate()
        self.frame_us = round(1e6 * frame_samples / sample_rate)
        self.history = _AudioHistory(MAX_TURN_AUDIO_S + params.pre_speech_ms / 1000, frame_samples, sample_rate)
        self.in_speech = False
        self.turn_active = False  # speech seen since the last EndOfTurn
        self.turn_start_us = 0
        self.speech_end_us = 0
        self._candidate_start_us: int | None = None  # start of a run of frames over threshold
        self._silence_us = 0  # silence inside a speech segment, before SpeechStopped
        self._pending: int | None = None  # request id awaited
        self._early: tuple[float, float] | None = None  # speculative answer waiting for the stop
        self._stopped_us = 0  # time of the last SpeechStopped
        self._next_request = 0
        self._last_prob = 0.0
        self._last_inference_ms = 0.0
        self.turns = 0

    @property
    def pending_request(self) -> int | None:
        """Id of the end-of-turn request whose result would still count, if any."""
        return self._pending

    def push(self, frame: np.ndarray, timestamp_us: int, speech_prob: float) -> list[Event]:
        """Process one frame starting at ``timestamp_us`` whose VAD probability is ``speech_prob``."""
        p = self.params
        end_us = timestamp_us + self.frame_us
        self.history.append(timestamp_us, frame)
        events: list[Event] = []

        if not self.in_speech:
            if speech_prob >= p.vad_threshold:
                if self._candidate_start_us is None:
                    self._candidate_start_us = timestamp_us
                if end_us - self._candidate_start_us >= max(p.min_speech_ms * 1000, 1):
                    events.append(self._start_speech(self._candidate_start_us, end_us))
            else:
                self._candidate_start_us = None
            if not self.in_speech and self.turn_active and end_us - self.speech_end_us >= p.silence_timeout_ms * 1000:
                events.append(self._end_turn(end_us, self._last_prob, "silence_timeout", self._last_inference_ms))
            return events

        # In speech: hysteresis on the negative threshold.
        if speech_prob >= p.negative_threshold:
            self._silence_us = 0
            self.speech_end_us = end_us
            self._drop_early()  # the pause was too short: a speculative answer no longer applies
            return events
        self._silence_us += self.frame_us
        stop = self._silence_us >= p.vad_stop_ms * 1000
        if stop:
            self.in_speech = False
            self._candidate_start_us = None
            events.append(SpeechStoppedEvent(end_us, self.speech_end_us))
            if end_us - self.speech_end_us >= p.silence_timeout_ms * 1000:
                events.append(self._end_turn(end_us, 0.0, "silence_timeout", 0.0))
                return events
        speculate = self._silence_us >= (p.vad_stop_ms - p.speculative_ms) * 1000
        if speculate and self._pending is None and self._early is None:
            self._next_request += 1
            self._pending = self._next_request
            turn_from = self.turn_start_us - p.pre_speech_ms * 1000
            events.append(EndOfTurnRequest(self._pending, end_us, self.speech_end_us, self.history.since(turn_from)))
        if stop:
            self._stopped_us = end_us
            if self._early is not None:
                (probability, inference_ms), self._early = self._early, None
                events += self._decide(probability, inference_ms)
        return events

    def on_prediction(self, request_id: int, probability: float, inference_ms: float) -> list[Event]:
        """The end-of-turn model's answer to ``request_id``; ignored (``[]``) when stale.

        An answer to a speculative request that arrives before ``vad_stop_ms`` of silence is kept and
        reported when the silence gets there (or dropped if speech resumes first).
        """
        if request_id != self._pending:
            return []
        self._pending = None
        if self.in_speech:
            self._early = (probability, inference_ms)
            return []
        return self._decide(probability, inference_ms)

    def on_prediction_failed(self, request_id: int) -> list[Event]:
        """The model could not answer: keep listening, the silence timeout will close the turn."""
        if request_id == self._pending:
            self._pending = None
        return []

    # -- internals -------------------------------------------------------------------------------

    def _decide(self, probability: float, inference_ms: float) -> list[Event]:
        """Prediction (and EndOfTurn when complete), stamped at the SpeechStopped time."""
        complete = probability >= self.params.end_of_turn_threshold
        self._last_prob, self._last_inference_ms = probability, inference_ms
        events: list[Event] = [PredictionEvent(self._stopped_us, probability, complete, inference_ms)]
        if complete:
            events.append(self._end_turn(self._stopped_us, probability, "model", inference_ms))
        return events

    def _drop_early(self) -> None:
        self._pending = None
        self._early = None

    def _start_speech(self, start_us: int, now_us: int) -> SpeechStartedEvent:
        self.in_speech = True
        self._silence_us = 0
        self._candidate_start_us = None
        self._drop_early()  # a pause's pending prediction no longer matters
        if not self.turn_active:
            self.turn_active = True
            self.turn_start_us = start_us
            self._last_prob, self._last_inference_ms = 0.0, 0.0
        self.speech_end_us = now_us
        return SpeechStartedEvent(now_us, start_us)

    def _end_turn(self, timestamp_us: int, probability: float, reason: str, inference_ms: float) -> EndOfTurnEvent:
        self.turn_active = False
        self._drop_early()
        self.turns += 1
        return EndOfTurnEvent(timestamp_us, probability, self.speech_end_us, reason, inference_ms)
