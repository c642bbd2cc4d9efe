"""Audio bookkeeping: streaming resampling on the session clock, the capped utterance buffer."""

from __future__ import annotations

import numpy as np
import soxr

from parley.audio import Audio
from services.asr.backends.base import Word, clean_words, snap_words_to_speech
from services.asr.buffer import AudioInput, UtteranceBuffer, peak_dbfs


def _tone(seconds: float, rate: int, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _feed(inp: AudioInput, samples: np.ndarray, rate: int, frame_ms: int = 20, t0_us: int = 0):
    step = rate * frame_ms // 1000
    chunks = []
    for i in range(0, len(samples), step):
        chunks += inp.push(Audio(samples[i : i + step], rate, t0_us + round(i * 1e6 / rate)))
    return chunks


def test_streaming_resample_matches_one_shot_and_keeps_time() -> None:
    x = _tone(1.0, 48_000)
    chunks = _feed(AudioInput(), x, 48_000, t0_us=2_000_000)
    out = np.concatenate([c for c, _ in chunks])
    ref = soxr.resample(x, 48_000, 16_000)
    assert abs(len(out) - 16_000) < 400  # the resampler holds back its filter delay until flushed
    assert np.max(np.abs(out - ref[: len(out)])) < 1e-5
    assert chunks[0][1] == 2_000_000
    for (a, ts_a), (_, ts_b) in zip(chunks, chunks[1:], strict=False):
        assert abs(ts_a + round(len(a) * 1e6 / 16_000) - ts_b) <= 1


def test_zero_timestamps_mean_contiguous_and_16k_passes_through() -> None:
    inp = AudioInput()
    a = inp.push(Audio(np.ones(320, np.float32) * 0.1, 16_000, 1_000_000))
    b = inp.push(Audio(np.ones(320, np.float32) * 0.1, 16_000, 0))
    assert a[0][1] == 1_000_000 and b[0][1] == 1_020_000
    assert len(a[0][0]) == 320


def test_gaps_are_filled_with_silence() -> None:
    buf = UtteranceBuffer(30)
    buf.append(np.ones(16_000, np.float32), 0)
    buf.append(np.ones(1600, np.float32), 1_500_000)  # 0.5 s gap
    assert buf.end_us == 1_600_000
    assert np.all(buf.samples[16_000:24_000] == 0)


def test_cap_keeps_the_most_recent_audio() -> None:
    buf = UtteranceBuffer(max_seconds=5)
    for i in range(7):
        buf.append(np.full(16_000, i, np.float32), i * 1_000_000)
    assert buf.duration_s == 5.0
    assert buf.start_us == 2_000_000 and buf.end_us == 7_000_000
    assert buf.samples[0] == 2 and buf.samples[-1] == 6
    assert buf.trimmed_samples == 2 * 16_000
    buf.append(np.full(16_000 * 9, 9, np.float32), 7_000_000)  # one chunk larger than the cap
    assert buf.duration_s == 5.0 and buf.end_us == 16_000_000 and np.all(buf.samples == 9)


def test_drop_before_keeps_the_tail_and_skips_late_audio() -> None:
    buf = UtteranceBuffer(30)
    buf.append(np.arange(48_000, dtype=np.float32), 1_000_000)  # 1.0 .. 4.0 s
    buf.drop_before(3_000_000)
    assert buf.start_us == 3_000_000 and len(buf) == 16_000 and buf.samples[0] == 32_000
    buf.drop_before(5_000_000)  # beyond the buffered audio
    assert len(buf) == 0
    buf.append(np.ones(16_000, np.float32), 4_000_000)  # 4..5 s belongs to the old utterance
    assert len(buf) == 0
    buf.append(np.ones(16_000, np.float32), 4_500_000)  # half of it is new
    assert buf.start_us == 5_000_000 and len(buf) == 8_000


def test_peak_dbfs() -> None:
    assert peak_dbfs(np.zeros(1000, np.float32)) == -120.0
    assert peak_dbfs(np.zeros(0, np.float32)) == -120.0
    loud = np.concatenate([np.zeros(16_000, np.float32), _tone(0.1, 16_000, 1.0)])
    assert -4 < peak_dbfs(loud) < -2  # a full-scale sine is -3 dBFS


def test_word_cleanup_and_snapping() -> None:
    words = clean_words([Word(" a ", 0.5, 0.4), Word(" ", 0, 1), Word("b", 0.3, 9.0)], duration_s=2.0)
    assert [(w.word, w.start_s, w.end_s) for w in words] == [("a", 0.5, 0.5), ("b", 0.5, 2.0)]
    samples = np.concatenate([np.zeros(8000, np.float32), _tone(0.5, 16_000), np.zeros(8000, np.float32)])
    snapped = snap_words_to_speech([Word("hi", 0.0, 1.5)], samples)
    assert abs(snapped[0].start_s - 0.5) <= 0.011 and abs(snapped[0].end_s - 1.0) <= 0.011
    noisy = np.random.default_rng(0).normal(0, 0.1, 16_000).astype(np.float32)
    assert snap_words_to_speech([Word("x", 0.1, 0.9)], noisy)[0].start_s == 0.1


def test_a_restarted_client_clock_is_not_mistaken_for_old_audio() -> None:
    buf = UtteranceBuffer(30)
    buf.append(np.ones(16_000, np.float32), 20_000_000)
    buf.drop_before(21_000_000)
    buf.append(np.ones(16_000, np.float32), 0)  # the client started counting from 0 again
    assert len(buf) == 16_000 and buf.start_us == 0
