"""TurnSession: real Silero VAD + a forced end-of-turn model, driven without gRPC."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from parley.audio import Audio
from parley.errors import InvalidInput
from services.turn.detector import DetectorParams, EndOfTurnEvent, PredictionEvent, SpeechStartedEvent
from services.turn.session import TurnSession
from tests.turn.helpers import ConstantModel, silence, speech_bounds, trim

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def executor():
    with ThreadPoolExecutor(2) as pool:
        yield pool


async def run(session: TurnSession, samples: np.ndarray, chunk: int = 320, start_us: int = 0) -> list:
    """Push ``samples`` in chunks as fast as possible; collect every event until the end."""
    for i in range(0, len(samples), chunk):
        await session.push(Audio(samples[i : i + chunk], 16_000, start_us + round(i * 1e6 / 16_000)))
    await session.finish()
    events = []
    while (event := await session.next_event()) is not None:
        events.append(event)
    return events


def names(events: list) -> list[str]:
    return [type(e).__name__ for e in events]


async def test_forced_low_model_falls_back_to_silence_timeout(vad_model, speak, executor) -> None:
    speech = speak("What is the capital of France?").samples
    audio = np.concatenate([silence(0.5), speech, silence(2.0)])
    model = ConstantModel(0.05)
    session = TurnSession(vad_model.stream(), model, DetectorParams(), executor)
    events = await run(session, audio, start_us=1_000_000)
    assert names(events) == ["SpeechStartedEvent", "SpeechStoppedEvent", "PredictionEvent", "EndOfTurnEvent"]
    started, stopped, prediction, eot = events
    first, last = speech_bounds(audio, 16_000)
    assert abs(started.speech_start_us - (1_000_000 + first * 1e6)) < 100_000
    assert abs(stopped.speech_end_us - (1_000_000 + last * 1e6)) < 200_000
    assert prediction == PredictionEvent(stopped.timestamp_us, 0.05, False, prediction.inference_ms)
    assert eot.reason == "silence_timeout" and eot.probability == pytest.approx(0.05)
    assert eot.speech_end_us == stopped.speech_end_us
    assert 1_200_000 <= eot.timestamp_us - eot.speech_end_us < 1_200_000 + 32_000
    # the model saw the turn: 500 ms before speech start up to the stop, at 16 kHz
    expected = (stopped.timestamp_us - started.speech_start_us + 500_000) / 1e6 * 16_000
    assert abs(model.calls[0] - expected) <= 512


async def test_forced_high_model_ends_turn_on_the_pause(vad_model, speak, executor) -> None:
    audio = np.concatenate([speak("Hello there, nice to meet you.").samples, silence(1.0)])
    session = TurnSession(vad_model.stream(), ConstantModel(0.97), DetectorParams(), executor)
    events = await run(session, audio)
    assert names(events)[-2:] == ["PredictionEvent", "EndOfTurnEvent"]
    assert events[-1].reason == "model" and events[-1].timestamp_us == events[-3].timestamp_us
    assert session.decision_latencies and session.decision_latencies[0] < 1.0


async def test_slow_model_and_fast_stream_still_decide_by_model(vad_model, speak, executor) -> None:
    """Audio pushed 100x faster than real time waits for the answer (model_wait_ms) instead of timing out."""
    audio = np.concatenate([speak("Good morning.").samples, silence(3.0)])
    session = TurnSession(vad_model.stream(), ConstantModel(0.9, delay_s=0.3), DetectorParams(), executor)
    events = await run(session, audio)
    assert [e.reason for e in events if isinstance(e, EndOfTurnEvent)] == ["model"]


async def test_model_failure_is_survived(vad_model, speak, executor) -> None:
    audio = np.concatenate([speak("Good morning.").samples, silence(1.6)])
    session = TurnSession(vad_model.stream(), ConstantModel(0.9, fail=True), DetectorParams(), executor)
    events = await run(session, audio)
    assert names(events) == ["SpeechStartedEvent", "SpeechStoppedEvent", "EndOfTurnEvent"]
    assert events[-1].reason == "silence_timeout"


async def test_two_turns_and_resumed_speech(vad_model, speak, executor) -> None:
    first = trim(speak("Hello there.").samples)
    audio = np.concatenate([first, silence(0.5), first, silence(2.0), first, silence(1.5)])
    session = TurnSession(vad_model.stream(), ConstantModel(0.1), DetectorParams(), executor)
    events = await run(session, audio)
    eots = [e for e in events if isinstance(e, EndOfTurnEvent)]
    assert len(eots) == 2 and {e.reason for e in eots} == {"silence_timeout"}
    # turn 1: speech, pause (model says incomplete), speech again, then the timeout
    turn1 = events[: events.index(eots[0]) + 1]
    assert sum(isinstance(e, SpeechStartedEvent) for e in turn1) >= 2
    times = [e.timestamp_us for e in events]
    assert times == sorted(times)


async def test_unset_timestamps_continue_the_clock(vad_model, executor) -> None:
    session = TurnSession(vad_model.stream(), ConstantModel(0.5), DetectorParams(), executor)
    await session.push(Audio(silence(0.1), 16_000, 5_000_000))
    await session.push(Audio(silence(0.1), 16_000, 0))
    assert session._next_us == 5_200_000
    with pytest.raises(InvalidInput, match="negative"):
        await session.push(Audio(silence(0.1), 16_000, -5))
    session.close()


async def test_close_cancels_running_inference(vad_model, speak, executor) -> None:
    audio = np.concatenate([trim(speak("Good morning.").samples), silence(0.25)])
    session = TurnSession(vad_model.stream(), ConstantModel(0.9, delay_s=0.5), DetectorParams(), executor)
    for i in range(0, len(audio), 320):
        await session.push(Audio(audio[i : i + 320], 16_000, round(i * 1e6 / 16_000)))
    assert session._inference is not None and not session._inference.done()
    session.close()
    await asyncio.sleep(0)
    assert session._inference.cancelled() or session._inference.done()
