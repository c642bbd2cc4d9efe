"""The turn state machine on synthetic probability sequences (no models, no gRPC)."""

from __future__ import annotations

import numpy as np
import pytest

from parley.errors import InvalidInput
from services.turn.detector import (
    DetectorParams,
    EndOfTurnEvent,
    EndOfTurnRequest,
    PredictionEvent,
    SpeechStartedEvent,
    SpeechStoppedEvent,
    TurnDetector,
)

FRAME_US = 32_000


class Driver:
    """Pushes frames of a given probability; frame i starts at i * 32 ms."""

    def __init__(self, **params: float) -> None:
        self.det = TurnDetector(DetectorParams(**params))
        self.i = 0
        self.events: list = []

    def feed(self, prob: float, frames: int = 1) -> list:
        out = []
        for _ in range(frames):
            frame = np.full(512, self.i, np.float32)  # frame content = its index, to check request audio
            out += self.det.push(frame, self.i * FRAME_US, prob)
            self.i += 1
        self.events += out
        return out

    def answer(self, prob: float, request: EndOfTurnRequest | None = None) -> list:
        request = request or self.requests()[-1]
        out = self.det.on_prediction(request.request_id, prob, 12.5)
        self.events += out
        return out

    def requests(self) -> list[EndOfTurnRequest]:
        return [e for e in self.events if isinstance(e, EndOfTurnRequest)]

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]


def test_speech_then_silence_gives_started_stopped_end_of_turn() -> None:
    d = Driver()
    d.feed(0.0, 10)  # 320 ms of silence
    d.feed(0.9, 20)  # speech from frame 10 (320 ms) to frame 30 (960 ms)
    d.feed(0.05, 5)  # 5 * 32 = 160 ms = vad_stop_ms
    assert d.kinds() == ["SpeechStartedEvent", "SpeechStoppedEvent", "EndOfTurnRequest"]
    started, stopped, request = d.events
    # min_speech_ms=120 -> confirmed at the end of the 4th speech frame (128 ms)
    assert started == SpeechStartedEvent(timestamp_us=14 * FRAME_US, speech_start_us=10 * FRAME_US)
    assert stopped == SpeechStoppedEvent(timestamp_us=35 * FRAME_US, speech_end_us=30 * FRAME_US)
    assert request.timestamp_us == 35 * FRAME_US and request.speech_end_us == 30 * FRAME_US
    # audio from pre_speech_ms (500 ms -> frame 10 - 15.6 -> frame 0) to now
    assert len(request.audio) == 35 * 512 and request.audio[0] == 0 and request.audio[-1] == 34

    out = d.answer(0.93)
    assert out == [
        PredictionEvent(35 * FRAME_US, 0.93, True, 12.5),
        EndOfTurnEvent(35 * FRAME_US, 0.93, 30 * FRAME_US, "model", 12.5),
    ]
    assert d.det.turns == 1 and not d.det.turn_active
    # silence after the end of turn produces nothing, not even a timeout
    assert d.feed(0.0, 60) == []


def test_short_blips_and_hysteresis() -> None:
    d = Driver()
    assert d.feed(0.9, 3) == []  # 96 ms < min_speech_ms
    assert d.feed(0.1, 2) == []
    started = d.feed(0.9, 4)
    assert len(started) == 1 and started[0].speech_start_us == 5 * FRAME_US
    # 0.4 is under vad_threshold (0.5) but over the negative threshold (0.35): still speech
    assert d.feed(0.4, 20) == []
    # 4 silent frames (128 ms) then speech: no stop
    assert d.feed(0.1, 4) == [] and d.feed(0.8, 1) == []
    assert d.det.in_speech


def test_speech_resuming_after_incomplete_prediction_continues_the_turn() -> None:
    d = Driver()
    d.feed(0.9, 10)
    d.feed(0.0, 5)
    first = d.requests()[-1]
    assert d.answer(0.2) == [PredictionEvent(15 * FRAME_US, 0.2, False, 12.5)]
    d.feed(0.0, 5)  # pause goes on (320 ms < silence timeout)
    resumed = d.feed(0.9, 10)
    assert isinstance(resumed[0], SpeechStartedEvent) and resumed[0].speech_start_us == 20 * FRAME_US
    assert d.det.turn_start_us == 0  # same turn
    d.feed(0.0, 5)
    second = d.requests()[-1]
    assert second.request_id != first.request_id
    assert len(second.audio) == 35 * 512  # the whole turn, both segments
    out = d.answer(0.8)
    assert isinstance(out[-1], EndOfTurnEvent) and out[-1].speech_end_us == 30 * FRAME_US
    assert d.kinds() == [
        "SpeechStartedEvent",
        "SpeechStoppedEvent",
        "EndOfTurnRequest",
        "PredictionEvent",
        "SpeechStartedEvent",
        "SpeechStoppedEvent",
        "EndOfTurnRequest",
        "PredictionEvent",
        "EndOfTurnEvent",
    ]


def test_stale_prediction_is_ignored_when_speech_resumed() -> None:
    d = Driver()
    d.feed(0.9, 10)
    d.feed(0.0, 5)
    request = d.requests()[-1]
    d.feed(0.9, 4)  # speech resumes before the model answered
    assert d.det.pending_request is None
    assert d.answer(0.99, request) == []
    assert d.det.in_speech and d.det.turn_active


def test_silence_timeout_closes_the_turn_when_the_model_says_incomplete() -> None:
    d = Driver()  # silence_timeout_ms=1200
    d.feed(0.9, 10)  # speech ends at 320 ms
    d.feed(0.0, 5)
    d.answer(0.1)
    out = d.feed(0.0, 40)
    eot = [e for e in out if isinstance(e, EndOfTurnEvent)]
    assert len(eot) == 1
    # the first frame whose end is >= 320 + 1200 ms: frame 47 ends at 1536 ms
    assert eot[0] == EndOfTurnEvent(48 * FRAME_US, 0.1, 10 * FRAME_US, "silence_timeout", 12.5)
    assert d.det.turns == 1


def test_silence_timeout_when_the_model_never_answers() -> None:
    d = Driver(silence_timeout_ms=500, vad_stop_ms=100)
    d.feed(0.9, 10)
    d.feed(0.0, 20)
    assert d.kinds()[-1] == "EndOfTurnEvent" and d.events[-1].reason == "silence_timeout"
    assert d.det.pending_request is None
    assert d.det.on_prediction(d.requests()[-1].request_id, 0.99, 1.0) == []


def test_model_failure_leaves_the_timeout_in_charge() -> None:
    d = Driver()
    d.feed(0.9, 10)
    d.feed(0.0, 5)
    assert d.det.on_prediction_failed(d.requests()[-1].request_id) == []
    out = d.feed(0.0, 40)
    assert [e.reason for e in out if isinstance(e, EndOfTurnEvent)] == ["silence_timeout"]


def test_a_new_turn_starts_after_end_of_turn() -> None:
    d = Driver()
    d.feed(0.9, 10)
    d.feed(0.0, 5)
    d.answer(0.9)
    d.feed(0.0, 10)
    d.feed(0.9, 10)  # second turn from frame 25
    assert d.det.turn_active and d.det.turn_start_us == 25 * FRAME_US
    d.feed(0.0, 5)
    request = d.requests()[-1]
    # the new turn's audio starts 500 ms before its speech: frame 25 - 15.6 -> frames 10.. (not turn 1)
    assert request.audio[0] == 10 and len(request.audio) == (40 - 10) * 512
    assert d.answer(0.7)[-1].reason == "model"
    assert d.det.turns == 2


def test_turn_audio_is_capped_at_8_seconds_plus_pre_speech() -> None:
    d = Driver()
    d.feed(0.9, 400)  # 12.8 s of speech
    d.feed(0.0, 5)
    audio = d.requests()[-1].audio
    assert len(audio) <= (8.5 * 16_000) + 512
    assert audio[-1] == 404


def test_vad_stop_equal_to_timeout_ends_without_model() -> None:
    d = Driver(vad_stop_ms=320, silence_timeout_ms=320)
    d.feed(0.9, 10)
    d.feed(0.0, 10)
    assert d.kinds() == ["SpeechStartedEvent", "SpeechStoppedEvent", "EndOfTurnEvent"]
    assert d.requests() == []


@pytest.mark.parametrize(
    "params, message",
    [
        ({"vad_threshold": 1.5}, "vad_threshold"),
        ({"vad_threshold": float("nan")}, "vad_threshold"),
        ({"end_of_turn_threshold": -0.1}, "end_of_turn_threshold"),
        ({"min_speech_ms": 10_000}, "min_speech_ms"),
        ({"silence_timeout_ms": 0}, "silence_timeout_ms"),
        ({"vad_stop_ms": 2000, "silence_timeout_ms": 1000}, "must not exceed"),
        ({"speculative_ms": 200}, "speculative_ms"),
    ],
)
def test_bad_params_are_invalid_input(params: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        TurnDetector(DetectorParams(**params))


def test_speculative_request_answered_before_the_stop() -> None:
    d = Driver(speculative_ms=64)  # vad_stop_ms=160: ask the model after 96 ms of silence
    d.feed(0.9, 10)
    out = d.feed(0.0, 3)
    assert [type(e).__name__ for e in out] == ["EndOfTurnRequest"]
    assert out[0].timestamp_us == 13 * FRAME_US and len(out[0].audio) == 13 * 512
    assert d.answer(0.9) == []  # kept until the silence reaches vad_stop_ms
    out = d.feed(0.0, 2)
    assert out == [
        SpeechStoppedEvent(15 * FRAME_US, 10 * FRAME_US),
        PredictionEvent(15 * FRAME_US, 0.9, True, 12.5),
        EndOfTurnEvent(15 * FRAME_US, 0.9, 10 * FRAME_US, "model", 12.5),
    ]


def test_speculative_request_answered_after_the_stop() -> None:
    d = Driver(speculative_ms=64)
    d.feed(0.9, 10)
    d.feed(0.0, 5)
    assert d.kinds() == ["SpeechStartedEvent", "EndOfTurnRequest", "SpeechStoppedEvent"]
    assert d.answer(0.2) == [PredictionEvent(15 * FRAME_US, 0.2, False, 12.5)]


def test_speculative_answer_dropped_when_speech_resumes() -> None:
    d = Driver(speculative_ms=64)
    d.feed(0.9, 10)
    d.feed(0.0, 3)
    first = d.requests()[-1]
    d.feed(0.9, 1)  # a short pause between words
    assert d.answer(0.99, first) == [] and d.det.in_speech
    d.feed(0.0, 3)
    second = d.requests()[-1]
    assert second.request_id != first.request_id
    assert d.answer(0.1) == []
    assert [type(e).__name__ for e in d.feed(0.0, 2)] == ["SpeechStoppedEvent", "PredictionEvent"]


def test_speculative_answer_before_resume_in_same_gap_is_dropped() -> None:
    d = Driver(speculative_ms=64)
    d.feed(0.9, 10)
    d.feed(0.0, 3)
    d.answer(0.95)  # early answer kept...
    d.feed(0.9, 1)  # ...but speech resumed before the stop
    out = d.feed(0.0, 2)
    assert [type(e).__name__ for e in out] == []  # only 64 ms of silence so far: no stop, no stale answer
    assert not any(isinstance(e, EndOfTurnEvent) for e in d.events)
