"""Utterance logic without gRPC: partial scheduling, early finals, reuse, resume, trailing audio."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.asr.backends.base import Recognition, Word
from services.asr.decoder import Decoder, Priority
from services.asr.utterance import StreamSettings, TranscriptEvent, UtteranceSession

from .conftest import QUESTION

RATE = 16_000


def noise(seconds: float, level: float = 0.1, seed: int = 0) -> np.ndarray:
    """Loud enough to pass the silence gate."""
    return np.random.default_rng(seed).normal(0, level, int(seconds * RATE)).astype(np.float32)


class FakeDecode:
    """Records decodes; answers with the decoded duration, optionally after a delay or an error."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[tuple[float, bool, Priority]] = []
        self.fail_next = False
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, samples: np.ndarray, words: bool, priority: Priority) -> Recognition:
        self.calls.append((len(samples) / RATE, words, priority))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("decode failed")
        finally:
            self.in_flight -= 1
        dur = len(samples) / RATE
        return Recognition(f"{dur:.2f}s", [Word("w", 0.0, dur / 2)], 0.01, "en")


def make(decode: FakeDecode, **settings) -> tuple[UtteranceSession, list[TranscriptEvent]]:
    events: list[TranscriptEvent] = []
    return UtteranceSession(decode, events.append, StreamSettings(**settings)), events


def push_frames(session: UtteranceSession, samples: np.ndarray, start_us: int = 0, frame: int = 320) -> None:
    for i in range(0, len(samples), frame):
        session.push(samples[i : i + frame], start_us + round(i * 1e6 / RATE))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_early_final_is_reused_by_finalize() -> None:
    decode = FakeDecode()
    session, events = make(decode)
    push_frames(session, noise(2.2))
    session.speech_ended(2_000_000)  # audio up to 2.1 s (+pad) is here: starts at once
    await settle()
    assert session.early_decodes == 1 and decode.calls[0][2] == Priority.EARLY_FINAL
    push_frames(session, np.zeros(4800, np.float32), 2_200_000)  # trailing silence
    final = await session.finalize(2_000_000)
    assert final.final and final.reused_early_decode
    assert final.text == "2.10s" and final.audio_end_us == 2_100_000
    assert len(decode.calls) == 1
    assert final.words[0].start_us == 0 and events[-1] is final
    assert final.utterance_index == 0 and session.utterance_index == 1


async def test_finalize_waits_for_a_running_early_decode() -> None:
    decode = FakeDecode(delay=0.2)
    session, _ = make(decode)
    push_frames(session, noise(1.5))
    session.speech_ended(1_300_000)
    final = await session.finalize(1_300_000)
    assert final.reused_early_decode and len(decode.calls) == 1


async def test_speech_resumed_discards_the_early_decode() -> None:
    decode = FakeDecode(delay=0.05)
    session, _ = make(decode)
    push_frames(session, noise(1.2))
    session.speech_ended(1_000_000)
    await settle()
    session.speech_resumed(1_200_000)
    push_frames(session, noise(1.0, seed=1), 1_200_000)
    final = await session.finalize(2_200_000)
    assert not final.reused_early_decode
    assert final.text == "2.20s" and final.audio_start_us == 0
    assert [c[2] for c in decode.calls] == [Priority.EARLY_FINAL, Priority.FINAL]


async def test_finalize_far_after_the_early_decode_decodes_again() -> None:
    decode = FakeDecode()
    session, _ = make(decode, early_tolerance_ms=500)
    push_frames(session, noise(1.2))
    session.speech_ended(1_000_000)
    await settle()
    push_frames(session, noise(2.0, seed=2), 1_200_000)  # more speech the VAD never reported
    final = await session.finalize(3_000_000)
    assert not final.reused_early_decode and final.text == "3.10s"


async def test_finalize_keeps_trailing_audio_for_the_next_utterance() -> None:
    decode = FakeDecode()
    session, events = make(decode, pad_ms=0)
    push_frames(session, noise(3.0))
    first = await session.finalize(2_000_000)
    assert (first.audio_start_us, first.audio_end_us, first.text) == (0, 2_000_000, "2.00s")
    assert session.buffer.start_us == 2_000_000 and session.buffer.duration_s == 1.0
    push_frames(session, noise(0.5, seed=3), 3_000_000)
    second = await session.finalize(0)
    assert (second.audio_start_us, second.audio_end_us, second.text) == (2_000_000, 3_500_000, "1.50s")
    assert [e.utterance_index for e in events] == [0, 1]


async def test_pending_early_decode_starts_when_its_audio_arrives() -> None:
    decode = FakeDecode()
    session, _ = make(decode, pad_ms=100)
    push_frames(session, noise(1.0))
    session.speech_ended(1_000_000)  # the pad is not here yet
    assert session.early_decodes == 0
    push_frames(session, np.zeros(1600, np.float32), 1_000_000)
    assert session.early_decodes == 1
    final = await session.finalize(1_000_000)
    assert final.reused_early_decode and final.audio_end_us == 1_100_000


async def test_pending_early_decode_starts_after_the_pad_time_without_more_audio() -> None:
    decode = FakeDecode()
    session, _ = make(decode, pad_ms=50)
    push_frames(session, noise(1.0))
    session.speech_ended(1_000_000)
    assert session.early_decodes == 0
    await asyncio.sleep(0.15)
    assert session.early_decodes == 1
    assert (await session.finalize(1_000_000)).reused_early_decode


async def test_failed_early_decode_falls_back_to_a_fresh_one() -> None:
    decode = FakeDecode()
    decode.fail_next = True
    session, _ = make(decode)
    push_frames(session, noise(1.2))
    session.speech_ended(1_000_000)
    final = await session.finalize(1_000_000)
    assert not final.reused_early_decode and final.text == "1.10s" and len(decode.calls) == 2


async def test_partials_every_interval_one_at_a_time() -> None:
    decode = FakeDecode(delay=0.03)
    session, events = make(decode, partials=True, partial_interval_ms=300, partial_word_timestamps=False)
    for i in range(100):  # 2 s in 20 ms frames, paced a little
        session.push(noise(0.02, seed=i), i * 20_000)
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.1)
    partials = [e for e in events if not e.final]
    assert len(partials) >= 3
    assert decode.max_in_flight == 1
    assert all(c[1] is False and c[2] == Priority.PARTIAL for c in decode.calls)
    ends = [p.audio_end_us for p in partials]
    assert ends == sorted(ends)


async def test_no_partials_while_silent_or_after_speech_ended() -> None:
    decode = FakeDecode()
    session, events = make(decode, partials=True, partial_interval_ms=300)
    push_frames(session, np.zeros(RATE, np.float32))
    await settle()
    assert decode.calls == []  # silence is not decoded
    session.speech_resumed(1_000_000)
    push_frames(session, noise(0.5), 1_000_000)
    await settle()
    assert len(decode.calls) == 1
    session.speech_ended(1_500_000)
    push_frames(session, noise(1.0, seed=4), 1_500_000)
    await settle()
    assert [c[2] for c in decode.calls] == [Priority.PARTIAL, Priority.EARLY_FINAL]
    # With partials on, the early decode is also shared as a partial.
    assert events[-1].final is False and events[-1].audio_end_us == 1_600_000  # at + pad


async def test_stale_partial_is_dropped_after_finalize() -> None:
    decode = FakeDecode(delay=0.1)
    session, events = make(decode, partials=True, partial_interval_ms=300)
    push_frames(session, noise(0.5))
    await settle()
    assert len(decode.calls) == 1  # a partial is running
    await session.finalize(0)
    await asyncio.sleep(0.15)
    assert [e.final for e in events] == [True]


async def test_first_speech_drops_old_silence_but_later_speech_keeps_everything() -> None:
    session, _ = make(FakeDecode(), preroll_ms=1000)
    push_frames(session, np.zeros(5 * RATE, np.float32))
    session.speech_resumed(5_000_000)
    assert session.buffer.start_us == 4_000_000
    push_frames(session, noise(1.0), 5_000_000)
    session.speech_ended(6_000_000)
    session.speech_resumed(6_500_000)  # a pause inside the utterance: keep it all
    assert session.buffer.start_us == 4_000_000


async def test_silent_or_empty_final_is_empty_text_without_decoding() -> None:
    decode = FakeDecode()
    session, _ = make(decode)
    empty = await session.finalize(0)
    assert empty.text == "" and empty.words == []
    push_frames(session, np.zeros(RATE, np.float32))
    silent = await session.finalize(0)
    assert silent.text == "" and decode.calls == [] and silent.utterance_index == 1


async def test_reset_drops_audio_and_pending_work() -> None:
    decode = FakeDecode(delay=0.05)
    session, events = make(decode, partials=True, partial_interval_ms=300)
    push_frames(session, noise(1.0))
    session.speech_ended(900_000)
    session.reset()
    assert len(session.buffer) == 0
    await asyncio.sleep(0.1)
    assert events == []
    push_frames(session, noise(0.5, seed=5), 2_000_000)
    final = await session.finalize(0)
    assert final.audio_start_us == 2_000_000 and final.utterance_index == 0
    await session.close()


@pytest.mark.models
async def test_real_model_early_final_and_latency(whisper, speak) -> None:
    """Measurement (printed with -s): FINALIZE -> final with and without the early decode."""
    decoder = Decoder(whisper)

    async def decode(samples, words, priority):  # noqa: ANN001, ANN202
        return await decoder.decode(samples, "en", words, priority)

    audio = speak(QUESTION).samples
    speech = np.concatenate([np.zeros(RATE // 4, np.float32), audio, np.zeros(RATE // 2, np.float32)])
    end_us = round((0.25 + len(audio) / RATE) * 1e6)
    timings = {}
    for early in (True, False):
        session, _ = make(decode, pause_decode=early)  # without: nothing to reuse, a full decode
        push_frames(session, speech)
        if early:
            session.speech_ended(end_us)
            await asyncio.sleep(0.8)  # the end-of-turn model deliberates a few hundred ms
        t0 = asyncio.get_running_loop().time()
        final = await session.finalize(end_us)
        timings[early] = asyncio.get_running_loop().time() - t0
        assert final.reused_early_decode is early
        assert "capital" in final.text.lower() and "france" in final.text.lower()
        assert final.words[0].start_us >= 200_000  # snapped past the leading silence
        assert all(a.start_us <= b.start_us for a, b in zip(final.words, final.words[1:], strict=False))
        assert final.words[-1].end_us <= final.audio_end_us
    print(
        f"\n[asr] FINALIZE->final: {1000 * timings[True]:.1f} ms with early decode, "
        f"{1000 * timings[False]:.0f} ms without"
    )
    assert timings[True] < timings[False]
    decoder.close()


async def test_in_flight_partial_that_covers_the_speech_becomes_the_early_final() -> None:
    decode = FakeDecode(delay=0.1)
    session, events = make(decode, partials=True, partial_interval_ms=300, partial_word_timestamps=True)
    push_frames(session, noise(0.3))
    await settle()
    assert len(decode.calls) == 1  # a partial over 0..0.3 s is running
    push_frames(session, np.zeros(1600, np.float32), 300_000)
    session.speech_ended(250_000)  # ... and it covers the speech, which ended at 0.25 s
    assert session.adopted_partials == 1 and session.early_decodes == 0
    final = await session.finalize(250_000)
    assert final.reused_early_decode and final.audio_end_us == 300_000 and len(decode.calls) == 1
    assert [e.final for e in events] == [True]  # the utterance ended before its partial came back


async def test_pause_decode_starts_after_speech_and_is_adopted_by_speech_ended() -> None:
    decode = FakeDecode(delay=0.05)
    session, events = make(decode)  # partials off: pause decodes still run
    push_frames(session, noise(1.0))
    push_frames(session, np.zeros(960, np.float32), 1_000_000)  # 60 ms: not a pause yet (pause_tail_ms=100)
    await settle()
    assert decode.calls == []
    push_frames(session, np.zeros(960, np.float32), 1_060_000)  # 120 ms quiet
    await settle()
    assert decode.calls == [(1.1, True, Priority.EARLY_FINAL)]  # starts once 100 ms are quiet
    await asyncio.sleep(0.1)  # done before SPEECH_ENDED arrives
    push_frames(session, np.zeros(1600, np.float32), 1_120_000)
    session.speech_ended(1_000_000)
    assert session.adopted_partials == 1 and session.early_decodes == 0
    final = await session.finalize(1_000_000)
    assert final.reused_early_decode and final.text == "1.10s" and len(decode.calls) == 1
    assert events == [final]  # no partials were asked for


async def test_pause_decode_is_not_adopted_when_speech_followed_it() -> None:
    decode = FakeDecode()
    session, _ = make(decode)
    push_frames(session, noise(0.5))
    push_frames(session, np.zeros(3200, np.float32), 500_000)
    await settle()
    assert session.pause_decodes == 1
    push_frames(session, noise(0.5, seed=9), 700_000)  # the user went on
    session.speech_ended(1_100_000)
    assert session.adopted_partials == 0 and session.early_decodes == 1


async def test_partial_without_word_timings_is_not_adopted() -> None:
    decode = FakeDecode(delay=0.1)
    session, _ = make(decode, partials=True, partial_interval_ms=300, partial_word_timestamps=False)
    push_frames(session, noise(0.4))
    await settle()
    session.speech_ended(250_000)
    assert session.adopted_partials == 0 and session.early_decodes == 1


async def test_pauses_do_not_trigger_partials() -> None:
    decode = FakeDecode()
    session, events = make(decode, partials=True, partial_interval_ms=300)
    push_frames(session, noise(0.3, level=0.3))
    await settle()
    push_frames(session, noise(0.9, level=0.001, seed=6), 300_000)  # quiet pause, 3 intervals
    await settle()
    assert len(decode.calls) == 1 and len(events) == 1


async def test_partial_deferred_by_a_pause_starts_with_the_next_audible_frame() -> None:
    decode = FakeDecode()
    session, _ = make(decode, partials=True, partial_interval_ms=300)
    push_frames(session, noise(0.3, level=0.3))
    await settle()
    push_frames(session, noise(0.5, level=0.001, seed=7), 300_000)
    await settle()
    assert len(decode.calls) == 1
    session.push(noise(0.02, level=0.3, seed=8), 800_000)
    await settle()
    assert len(decode.calls) == 2 and decode.calls[1][0] == pytest.approx(0.82)


async def test_an_utterance_over_the_cap_keeps_its_last_seconds() -> None:
    decode = FakeDecode()
    session, _ = make(decode, max_utterance_s=5.0, pad_ms=0)
    for second in range(8):
        push_frames(session, noise(1.0, seed=second), second * 1_000_000)
    final = await session.finalize(0)
    assert (final.audio_start_us, final.audio_end_us, final.text) == (3_000_000, 8_000_000, "5.00s")
