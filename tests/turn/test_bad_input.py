"""Malformed streams are rejected with a status and a message; the process and other streams carry on."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import pytest_asyncio

from parley.v1 import turn_pb2
from tests.turn.helpers import NAN_F32, audio_requests, raw_audio, run_stream, silence, start_request

pytestmark = [pytest.mark.models, pytest.mark.asyncio(loop_scope="module")]

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PCM = np.zeros(320, "<i2").tobytes()  # 20 ms of silence at 16 kHz


def bad_cases(session_id: str) -> dict[str, tuple[list[turn_pb2.TurnRequest], grpc.StatusCode, str]]:
    """name -> (requests, expected code, a fragment of the expected message)."""
    start = start_request(session_id)
    return {
        "audio_first": ([raw_audio(PCM)], INVALID, "first TurnRequest must be a TurnStart"),
        "empty_stream": ([], INVALID, "ended before its TurnStart"),
        "unknown_session": ([start_request("no-such-session-42")], grpc.StatusCode.NOT_FOUND, "unknown session_id"),
        "malformed_session": ([start_request("bad id!")], INVALID, "session_id must be"),
        "missing_session": ([start_request("")], INVALID, "session_id is required"),
        "rate_1000": ([start, raw_audio(PCM, rate=1000)], INVALID, "sample_rate 1000 Hz"),
        "odd_bytes": ([start, raw_audio(b"\x00\x01\x02")], INVALID, "not a whole number"),
        "nan_f32": ([start, raw_audio(NAN_F32, encoding=2)], INVALID, "NaN"),
        "chunk_over_5s": ([start, raw_audio(np.zeros(16_000 * 6, "<i2").tobytes())], INVALID, "exceeds the 5.0 s"),
        "second_start": ([start, raw_audio(PCM), start], INVALID, "TurnStart may only be sent once"),
        "empty_request": ([start, turn_pb2.TurnRequest()], INVALID, "must carry audio"),
        "negative_timestamp": ([start, raw_audio(PCM, ts=-20_000)], INVALID, "must not be negative"),
        "bad_threshold": ([start_request(session_id, vad_threshold=1.5)], INVALID, "vad_threshold"),
        "stop_after_timeout": (
            [start_request(session_id, vad_stop_ms=3000, silence_timeout_ms=1000)],
            INVALID,
            "must not exceed",
        ),
    }


CASES = list(bad_cases("x"))


@pytest.fixture
def target(shared_service) -> str:
    return f"127.0.0.1:{shared_service[0].port}"


@pytest_asyncio.fixture(loop_scope="module")
async def store(shared_service):
    return shared_service[1]


@pytest_asyncio.fixture(loop_scope="module")
async def session_id(store) -> str:
    return await store.create(persona="test")


@pytest.mark.parametrize("case", CASES)
async def test_bad_stream_is_rejected(target: str, session_id: str, case: str) -> None:
    requests, code, fragment = bad_cases(session_id)[case]
    result = await run_stream(target, requests, deadline_s=20)
    assert result.code == code, (case, result.code, result.details)
    assert fragment in result.details, (case, result.details)


async def test_bad_streams_do_not_disturb_a_good_one(target: str, session_id: str, store, speak) -> None:
    good_id = await store.create()
    audio = np.concatenate([speak("What is the capital of France?").samples, silence(1.5)])
    good = run_stream(target, [start_request(good_id, "good")] + audio_requests(audio, 16_000), pace_s=0.005)
    bad = [run_stream(target, reqs, deadline_s=20) for reqs, _, _ in bad_cases(session_id).values()]
    results = await asyncio.gather(good, *bad)

    good_result = results[0]
    assert good_result.code is None, good_result.details
    assert good_result.kinds() == ["speech_started", "speech_stopped", "prediction", "end_of_turn"]
    assert good_result.events[-1].end_of_turn.reason == "model"
    assert all(r.code is not None for r in results[1:])
    # and the server still serves new streams afterwards
    again = await run_stream(target, [start_request(good_id)] + audio_requests(audio, 16_000))
    assert again.kinds()[-1] == "end_of_turn"


async def test_client_cancel_mid_stream(target: str, session_id: str, speak) -> None:
    audio = np.concatenate([speak("Hello there, how are you?").samples, silence(2.0)])
    requests = [start_request(session_id)] + audio_requests(audio, 16_000)
    # cancel right after the end of turn arrives, while audio is still being sent
    result = await run_stream(target, requests, pace_s=0.002, stop_after_eot=True)
    assert result.kinds()[-1] == "end_of_turn"
    again = await run_stream(target, requests)
    assert again.code is None and again.kinds()[-1] == "end_of_turn"
