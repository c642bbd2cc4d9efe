"""Driving logic on Controls values: visemes, coarticulation, audio fallback, emotion, listening behaviour."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from services.renderer.controls import CONTROL_NAMES, CONTROL_RANGES, Controls
from services.renderer.driving import (
    AudioMouth,
    DrivingOptions,
    Emotion,
    Mode,
    SpeechTrack,
    Timeline,
    VisemeTrack,
    speech_controls,
    viseme_for,
)
from services.renderer.driving.visemes import SIL, UNKNOWN

FPS = 30
MOUTH = ["jaw_open", "lip_round", "lip_stretch", "lip_press"]
MAX_MOUTH_STEP = 0.45  # largest change of a mouth control between two frames at 30 fps (a closure takes >= 3)


def seq(*items: tuple[str, float], start: float = 0.0) -> list[tuple[str, float, float]]:
    """(label, duration) pairs to back-to-back (label, start_s, end_s) phones."""
    out, t = [], start
    for label, dur in items:
        out.append((label, t, t + dur))
        t += dur
    return out


def center(phone: tuple[str, float, float]) -> float:
    return (phone[1] + phone[2]) / 2


@pytest.fixture(scope="module")
def reply():
    """A real hibari reply: (audio, rate, words, phonemes) with duration-predictor timings."""
    from services.tts.backends.hibari_backend import HibariBackend
    from services.tts.config import HibariConfig

    backend = HibariBackend(HibariConfig())
    backend.load()
    syn = backend.synthesize("Maybe both of us could meet at the museum. Please bring a warm blue coat!", 1.0)
    return syn.audio, syn.sample_rate, syn.words, syn.phonemes


def frame_rms(audio: np.ndarray, rate: int, n: int) -> np.ndarray:
    hop = rate // FPS
    return np.array([
        np.sqrt(np.mean(np.square(audio[max(0, round(k * rate / FPS) - hop // 2) : round(k * rate / FPS) + hop // 2])))
        for k in range(n)
    ])


def best_lag(x: np.ndarray, y: np.ndarray, max_lag: int = 3) -> tuple[int, float]:
    """Lag (frames, positive = x later than y) with the highest Pearson correlation, and that correlation."""
    n = min(len(x), len(y))
    scores = {}
    for lag in range(-max_lag, max_lag + 1):
        a = x[max(0, lag) : n + min(0, lag)]
        b = y[max(0, -lag) : n - max(0, lag)]
        scores[lag] = float(np.corrcoef(a, b)[0, 1])
    lag = max(scores, key=scores.get)
    return lag, scores[lag]


# -- visemes ---------------------------------------------------------------------------------------
def test_every_hibari_symbol_has_a_viseme():
    import hibari.tts

    vocab = json.load(open(os.path.join(hibari.tts.ASSETS, "vocab.json"), encoding="utf-8"))
    marks = set(' !"(),.:;?—“”…→↓↗↘ˈˌːʰʲ\u0303ᵝ')
    unknown = [s for s in vocab if s not in marks and any(v is UNKNOWN for v in viseme_for(s))]
    assert not unknown, f"phonemes without a viseme: {unknown}"
    assert viseme_for("_") == [SIL]
    assert len(viseme_for("I")) == 2  # diphthong aɪ glides
    assert viseme_for("ˈɑ") == viseme_for("ɑ")  # stress folded into the phoneme


def test_bilabials_close_the_lips_between_open_vowels():
    phones = seq(("_", 0.2), ("ɑ", 0.15), ("m", 0.07), ("ɑ", 0.15), ("b", 0.06), ("æ", 0.15), ("p", 0.06),
                 ("ɑ", 0.15), ("_", 0.3))
    track = VisemeTrack(phones)
    for p in phones:
        jaw, rnd, stretch, press = track.at(center(p))
        if p[0] in "mbp":
            assert press >= 0.7 and jaw <= 0.12, (p, jaw, press)
        elif p[0] in "ɑæ":
            assert jaw >= 0.55 and press <= 0.3, (p, jaw, press)
    # the 30 fps frame nearest each bilabial's centre shows the lips closed too
    frames = track.at(np.arange(0, 1.5, 1 / FPS))
    for p in phones:
        if p[0] in "mbp":
            k = round(center(p) * FPS)
            assert frames[k, 3] >= 0.55 and frames[k, 0] <= 0.2, (p, frames[k])


def test_anticipation_and_vowel_shapes():
    phones = seq(("_", 0.2), ("ɑ", 0.2), ("m", 0.08), ("i", 0.2), ("w", 0.06), ("u", 0.2), ("_", 0.3))
    track = VisemeTrack(phones)
    m_start = phones[2][1]
    # the lips start closing before the /m/ begins while /ɑ/ still sounds
    early = track.at(m_start - 0.03)
    mid_a = track.at(center(phones[1]))
    assert early[3] > 0.15 and early[0] < mid_a[0] - 0.1
    ee, oo = track.at(center(phones[3])), track.at(center(phones[5]))
    assert ee[2] >= 0.5 and ee[2] > ee[1] + 0.3  # /i/ stretches
    assert oo[1] >= 0.6 and oo[1] > oo[2] + 0.4  # /u/ rounds
    assert mid_a[0] > ee[0] and mid_a[0] > oo[0]  # /ɑ/ opens the jaw most
    # rounding of /w u/ is anticipated through the /w/ onset
    assert track.at(phones[4][1])[1] > 0.3
    # outside the timings: neutral
    assert np.allclose(track.at(5.0), 0.0, atol=1e-3)


def test_real_timings_smooth_and_track_the_envelope(reply):
    audio, rate, words, phonemes = reply
    track = SpeechTrack(rate)
    for i in range(0, len(audio), 4800):  # arrives in 200 ms chunks like the TTS stream
        track.add_audio(audio[i : i + 4800], i / rate)
    track.add_timings(phonemes, words)
    controls = speech_controls(track)
    values = np.array([[getattr(c, m) for m in MOUTH] for c in controls])
    steps = np.abs(np.diff(values, axis=0)).max(axis=0)
    assert steps.max() <= MAX_MOUTH_STEP, dict(zip(MOUTH, steps, strict=True))
    assert values[:, 0].max() > 0.4 and values[:, 3].max() > 0.6  # the mouth opens wide and closes fully
    lag, corr = best_lag(values[:, 0], frame_rms(audio, rate, len(values)))
    assert abs(lag) <= 1 and corr >= 0.5, (lag, corr)  # a bilabial-heavy reply: m b p w close loud frames
    # bilabials in real speech: the lips press at the frame nearest the middle of each m/b/p
    for p in phonemes:
        if p.label.lstrip("ˈˌ") in ("m", "b", "p"):
            k = round((p.start_us + p.end_us) / 2e6 * FPS)
            assert values[k, 3] >= 0.4 and values[k, 0] <= 0.25, (p, values[k])


def test_audio_fallback_follows_the_envelope(reply):
    audio, rate, _, _ = reply
    lead = np.zeros(rate // 2, np.float32)  # half a second of silence before the speech
    audio = np.concatenate([lead, audio])
    track = SpeechTrack(rate)  # no timings: the mouth comes from the audio alone
    track.add_audio(audio)
    controls = speech_controls(track)
    jaw = np.array([c.jaw_open for c in controls])
    assert np.all(jaw[: int(0.4 * FPS)] < 0.02)  # silence: closed
    lag, corr = best_lag(jaw, frame_rms(audio, rate, len(jaw)))
    assert abs(lag) <= 1 and corr >= 0.6, (lag, corr)
    assert jaw.max() > 0.4


def test_audio_mouth_vowel_colour():
    rate = 24_000
    t = np.arange(rate // 5) / rate

    def vowel(f1: float, f2: float) -> np.ndarray:  # a crude two-formant vowel on a 120 Hz source
        src = sum(np.sin(2 * np.pi * 120 * h * t) / h for h in range(1, 40))
        spec = np.fft.rfft(src)
        f = np.fft.rfftfreq(len(src), 1 / rate)
        gain = np.exp(-((f - f1) / 120) ** 2) + np.exp(-((f - f2) / 150) ** 2)
        return (0.2 * np.fft.irfft(spec * gain, len(src)) / np.abs(src).max()).astype(np.float32)

    out = {}
    for name, (f1, f2) in {"i": (300, 2300), "u": (320, 800)}.items():
        mouth = AudioMouth(FPS)
        x = vowel(f1, f2)
        for _ in range(6):
            m = mouth.frame(x[: rate // 15], rate)
        out[name] = m
    assert out["i"][2] > out["u"][2] and out["u"][1] > out["i"][1]


# -- emotion ---------------------------------------------------------------------------------------
def run(timeline: Timeline, seconds: float, mouth=None) -> np.ndarray:
    return np.array([timeline.next(mouth).as_array() for _ in range(round(seconds * FPS))])


def col(name: str) -> int:
    return CONTROL_NAMES.index(name)


def test_emotion_transitions_are_smooth():
    tl = Timeline(DrivingOptions(fps=FPS), mode=Mode.LISTENING)
    run(tl, 0.5)
    tl.set_emotion("joy", 1.0)
    joy = run(tl, 1.0)
    assert joy[-1, col("smile")] == pytest.approx(0.85, abs=0.01)
    assert joy[-1, col("brow_raise")] > 0.1
    tl.set_emotion(Emotion.SURPRISE, 0.8, transition_s=0.0)  # 0 -> the minimum transition, not a jump
    surprise = run(tl, 1.0)
    tl.set_emotion("anger", 1.0, transition_s=1.0)
    half = run(tl, 0.5)
    tl.set_emotion("sorrow", 0.6)  # interrupts the transition mid-way
    sorrow = run(tl, 1.0)
    everything = np.concatenate([joy, surprise, half, sorrow])
    for name in ("smile", "brow_raise", "jaw_open", "lip_press"):
        step = np.abs(np.diff(everything[:, col(name)])).max()
        assert step <= 0.15, (name, step)
    assert surprise[-1, col("brow_raise")] == pytest.approx(0.95 * 0.8, abs=0.02)
    assert surprise[-1, col("jaw_open")] > 0.1
    assert sorrow[-1, col("smile")] < -0.35
    with pytest.raises(ValueError):
        tl.set_emotion("bored", 0.5)
    with pytest.raises(ValueError):
        tl.set_emotion("joy", 1.5)


def test_emotion_and_speech_combine():
    tl = Timeline(DrivingOptions(fps=FPS), emotion="anger", intensity=1.0)
    frames = run(tl, 1.0, mouth=np.array([0.6, 0.0, 0.0, 0.0]))
    assert frames[-1, col("brow_raise")] < -0.7  # the expression stays while talking
    assert frames[-1, col("jaw_open")] >= 0.6
    assert frames[-1, col("lip_press")] < 0.25  # anger's pressed lips give way to speech
    lo = np.array([CONTROL_RANGES[n][0] for n in CONTROL_NAMES])
    hi = np.array([CONTROL_RANGES[n][1] for n in CONTROL_NAMES])
    assert np.all(frames >= lo) and np.all(frames <= hi)


# -- listening / idle ------------------------------------------------------------------------------
def test_listening_blinks_moves_the_head_and_keeps_the_mouth_still():
    tl = Timeline(DrivingOptions(fps=FPS, seed=3), mode=Mode.LISTENING)
    frames = run(tl, 10.0)
    blink = frames[:, col("blink_left")]
    closed = blink > 0.5
    onsets = int(np.sum(closed[1:] & ~closed[:-1]) + closed[0])
    assert onsets >= 1 and blink.max() > 0.7
    assert np.mean(closed) < 0.15  # blinks are brief
    # a blink lasts ~150 ms: never more than 5 frames closed in a row
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], closed.astype(int), [0]]))))[::2]
    assert runs.max() <= 5
    for name in ("head_yaw", "head_pitch", "head_roll"):
        assert np.ptp(frames[:, col(name)]) > 0.005, name
        assert np.abs(np.diff(frames[:, col(name)])).max() < 0.01  # smooth
    for name in MOUTH:
        assert np.ptp(frames[:, col(name)]) == 0.0, name


def test_blink_intervals_are_two_to_six_seconds():
    tl = Timeline(DrivingOptions(fps=FPS, seed=11))
    times = tl.idle.blink_times(120.0)
    gaps = np.diff(times)
    singles = gaps[gaps > 0.5]
    assert len(times) >= 20
    assert singles.min() >= 2.0 - 1e-9 and singles.max() <= 6.0 + 1e-9


def test_user_pause_nods():
    tl = Timeline(DrivingOptions(fps=FPS, seed=5), mode=Mode.LISTENING)
    ref = Timeline(DrivingOptions(fps=FPS, seed=5), mode=Mode.LISTENING)
    run(tl, 1.0)
    run(ref, 1.0)
    tl.nod()
    nodded, plain = run(tl, 1.0), run(ref, 1.0)
    diff = nodded[:, col("head_pitch")] - plain[:, col("head_pitch")]
    assert diff.max() >= 0.08 and diff[-1] == pytest.approx(0.0, abs=1e-6)
    assert np.abs(np.diff(nodded[:, col("head_pitch")])).max() < 0.03
    assert np.all(nodded[:, [col(m) for m in MOUTH]] == plain[:, [col(m) for m in MOUTH]])


def test_speech_stop_releases_the_mouth_quickly():
    tl = Timeline(DrivingOptions(fps=FPS))
    run(tl, 0.3, mouth=np.array([0.8, 0.2, 0.1, 0.0]))
    after = run(tl, 0.3)
    assert after[4, col("jaw_open")] < 0.1 and after[-1, col("jaw_open")] == 0.0


def test_controls_round_trip():
    c = Controls(jaw_open=0.3, smile=-0.2)
    assert Controls.from_array(c.as_array()) == Controls(jaw_open=pytest.approx(0.3), smile=pytest.approx(-0.2))
