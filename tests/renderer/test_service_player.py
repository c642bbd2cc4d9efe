"""Speech playout and frame scheduling logic of the renderer service, without gRPC or rendering."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from parley.errors import InvalidInput
from services.renderer.controls import Controls
from services.renderer.driving import DrivingOptions
from services.renderer.schedulers import BatchScheduler
from services.renderer.session import SpeechPlayer, i420_to_rgb, rgb_to_i420

RATE, FPS = 24_000, 30
PER_FRAME = RATE // FPS


def player(prebuffer_s: float = 0.1) -> SpeechPlayer:
    return SpeechPlayer(RATE, FPS, prebuffer_s, 60.0, DrivingOptions(fps=FPS))


def play(p: SpeechPlayer, first: int, frames: int):
    """Plan + commit ``frames`` frames from ``first``: (plans, events)."""
    plans, events = [], []
    for k in range(first, first + frames):
        plan = p.plan(k)
        before, after = p.commit(plan)
        plans.append(plan)
        events += before + after
    return plans, events


def tone(seconds: float) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 220 * np.arange(round(seconds * RATE)) / RATE)).astype(np.float32)


def test_utterance_plays_frame_by_frame_on_the_stream_clock():
    p = player()
    audio = tone(0.5)
    p.add("u1", audio[:1200], 0, [], [("ɑ", 0.0, 0.25), ("m", 0.25, 0.5)])
    plans, events = play(p, 0, 3)
    assert not any(plan.speaking for plan in plans)  # 50 ms < 100 ms prebuffer: waiting
    p.add("u1", audio[1200:], 50_000, [("ahm", 0.0, 0.5)], [])
    p.end("u1")
    plans, events = play(p, 3, 20)
    started = [e for e in events if e.HasField("playback_started")]
    finished = [e for e in events if e.HasField("playback_finished")]
    assert started[0].playback_started.pts_us == p.pts_us(3)
    played = np.concatenate([plan.samples for plan in plans])
    assert np.array_equal(played, audio)  # every sample, once, in order
    assert all(len(plan.samples) == PER_FRAME for plan in plans[:15])
    done = finished[0].playback_finished
    assert done.duration_us == 500_000 and done.pts_us == p.pts_us(3) + 500_000
    assert [w.word for w in done.words] == ["ahm"]
    assert p.idle and p.last_audio_end_us == done.pts_us
    mouths = [plan.mouth for plan in plans if plan.mouth is not None]
    assert max(m[0] for m in mouths) > 0.4 and max(m[3] for m in mouths) > 0.6  # /ɑ/ opens, /m/ closes


def test_underrun_holds_without_losing_audio():
    p = player(prebuffer_s=0.0)
    audio = tone(0.3)
    p.add("u", audio[:PER_FRAME * 2], 0, [], [])
    plans, _ = play(p, 0, 4)
    assert [len(x.samples) for x in plans] == [PER_FRAME, PER_FRAME, 0, 0]
    assert plans[2].speaking and plans[2].mouth is not None  # holds the mouth while starved
    p.add("u", audio[PER_FRAME * 2 :], PER_FRAME * 2 * 1_000_000 // RATE, [], [])
    p.end("u")
    plans2, events = play(p, 4, 10)
    assert np.array_equal(np.concatenate([x.samples for x in plans + plans2]), audio)


def test_clear_reports_what_was_actually_played_and_drops_the_rest():
    p = player(prebuffer_s=0.0)
    words = [("one", 0.0, 0.3), ("two", 0.3, 0.6), ("three", 0.6, 1.0)]
    p.add("a", tone(1.0), 0, words, [])
    p.add("b", tone(0.5), 0, [], [])
    play(p, 0, 12)  # 12 frames = 0.4 s of "a"
    pending = p.plan(12)  # planned but never committed (e.g. discarded at barge-in)
    assert pending.speaking
    ack = p.clear()
    assert ack.utterance_id == "a" and ack.played_us == 400_000
    assert ack.pts_us == p.pts_us(12)  # end of the last committed sample
    assert [w.word for w in ack.words_played] == ["one", "two"] and ack.last_word_cut
    assert list(ack.dropped_utterance_ids) == ["b"]
    assert p.idle
    p.add("a", tone(0.2), 1_000_000, [], [])  # a late chunk of a cleared utterance is dropped
    assert p.idle and not p.plan(13).speaking
    p.add("c", tone(0.2), 0, [], [])  # a new reply plays normally
    assert p.plan(13).speaking


def test_invalid_speech_sequences():
    p = player()
    p.add("x", tone(0.1), 0, [], [])
    p.end("x")
    with pytest.raises(InvalidInput, match="after its RenderSpeechEnd"):
        p.add("x", tone(0.1), 100_000, [], [])
    small = SpeechPlayer(RATE, FPS, 0.1, 1.0, DrivingOptions())
    with pytest.raises(InvalidInput, match="unplayed speech"):
        small.add("y", tone(1.5), 0, [], [])


def test_i420_round_trip():
    rng = np.random.default_rng(0)
    rgb = (rng.random((6, 8, 3)) * 255).astype(np.uint8)
    rgb = rgb.repeat(2, 0).repeat(2, 1)  # flat 2x2 blocks survive chroma subsampling
    data = rgb_to_i420(rgb)
    assert len(data) == 12 * 16 * 3 // 2
    assert np.abs(i420_to_rgb(data, 16, 12).astype(int) - rgb).max() <= 3


async def test_batch_scheduler_gathers_one_tick_of_every_session():
    calls = []

    def render_batch(items):
        calls.append(len(items))
        return [np.full((4, 4, 3), r, np.uint8) for r, _ in items]

    sched = BatchScheduler(render_batch, window_s=0.02, max_batch=8, active=lambda: 3)
    images = await asyncio.gather(*(sched.render(i, Controls(), post=lambda im: int(im[0, 0, 0])) for i in range(3)))
    assert images == [0, 1, 2] and calls == [3]
    alone = await sched.render(7, Controls())  # fewer sessions than active: the window closes the batch
    assert alone[0, 0, 0] == 7 and calls == [3, 1]
    sched.close()
