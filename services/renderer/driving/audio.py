"""Mouth motion from the speech audio itself: loudness envelope and spectral cues.

Two uses:

* :class:`Loudness` - a level in 0..1 per video frame relative to the speaker's running peak (dB scale).
  With phoneme timings it modulates the viseme jaw (loud syllables open wider, unstressed ones less), which
  also makes the mouth follow the audio envelope.
* :class:`AudioMouth` - the fallback when a TTS backend gives no timings: per frame, jaw from loudness and
  voicing (low-band share: vowels open, fricatives barely), stretch vs round from the energy of the F2 band
  against the F1 band (high F2 = /i e/, low = /u o/), a brief lip press when the level dips between loud
  frames (stop closures). A window centred on the frame plus a one-pole attack/release keeps it within
  about one frame of the audio.
"""

from __future__ import annotations

import numpy as np

FLOOR_DB = -70.0


def window_rms_db(samples: np.ndarray) -> float:
    """RMS level of ``samples`` in dBFS (``FLOOR_DB`` for silence / empty)."""
    if not len(samples):
        return FLOOR_DB
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return max(20.0 * np.log10(max(rms, 1e-9)), FLOOR_DB)


def frame_window(samples: np.ndarray, rate: int, t: float, half_s: float) -> np.ndarray:
    """``samples[t - half_s : t + half_s]`` (clipped to the buffer)."""
    a = max(0, int(round((t - half_s) * rate)))
    b = max(a, min(len(samples), int(round((t + half_s) * rate))))
    return samples[a:b]


class Loudness:
    """Frame level in 0..1: ``(dB - (peak - range_db)) / range_db`` with a slowly decaying running peak."""

    def __init__(self, range_db: float = 30.0, initial_peak_db: float = -22.0, min_peak_db: float = -45.0,
                 decay_db_per_s: float = 1.5) -> None:
        self.range_db = range_db
        self.peak_db = initial_peak_db
        self.min_peak_db = min_peak_db
        self.decay_db_per_s = decay_db_per_s

    def observe_peak(self, db: float) -> None:
        """Raise the running peak to ``db`` (e.g. from look-ahead audio already buffered)."""
        self.peak_db = max(self.peak_db, db)

    def level(self, db: float, dt: float = 0.0) -> float:
        self.peak_db = max(self.min_peak_db, self.peak_db - self.decay_db_per_s * dt, db)
        return float(np.clip((db - (self.peak_db - self.range_db)) / self.range_db, 0.0, 1.0))


class AudioMouth:
    """Audio-only mouth driver: call :meth:`frame` once per video frame, in time order."""

    def __init__(self, fps: float = 30.0, attack: float = 0.6, release: float = 0.45) -> None:
        self.fps = fps
        self.loudness = Loudness()
        self.attack = attack  # fraction of the gap closed per frame when opening
        self.release = release  # ... when closing
        self.state = np.zeros(4)
        self._prev_level = 0.0

    def features(self, window: np.ndarray, rate: int) -> tuple[float, float, float]:
        """(dB level, voicing 0..1, brightness 0..1: F2-band vs F1-band energy) of one window."""
        db = window_rms_db(window)
        if len(window) < 32 or db <= FLOOR_DB + 1:
            return db, 0.0, 0.5
        spec = np.abs(np.fft.rfft(window * np.hanning(len(window)))) ** 2
        freqs = np.fft.rfftfreq(len(window), 1.0 / rate)
        low = spec[(freqs >= 80) & (freqs < 1000)].sum()
        mid = spec[(freqs >= 1000) & (freqs < 3000)].sum()
        high = spec[(freqs >= 3000) & (freqs < min(8000, rate / 2))].sum()
        total = low + mid + high + 1e-12
        voicing = float(np.clip((low + 0.5 * mid) / total, 0.0, 1.0))
        f1 = spec[(freqs >= 200) & (freqs < 1000)].sum() + 1e-12
        f2 = spec[(freqs >= 1500) & (freqs < 3000)].sum() + 1e-12
        ratio_db = 10.0 * np.log10(f2 / f1)  # high F2 (i, e) ~ -15 dB; low F2 (u, o) ~ -40 dB
        return db, voicing, float(np.clip((ratio_db + 40.0) / 25.0, 0.0, 1.0))

    def frame(self, window: np.ndarray, rate: int) -> np.ndarray:
        """Mouth channels (jaw, round, stretch, press) for the frame whose audio window is ``window``."""
        db, voicing, bright = self.features(window, rate)
        level = self.loudness.level(db, 1.0 / self.fps)
        openness = level * (0.25 + 0.75 * np.clip(1.6 * voicing - 0.3, 0.0, 1.0))
        jaw = 0.85 * openness
        stretch = 0.6 * openness * bright
        rnd = 0.5 * openness * (1.0 - bright)
        press = 0.6 if (self._prev_level > 0.45 and level < 0.15) else 0.0  # closure between loud frames
        self._prev_level = 0.5 * self._prev_level + 0.5 * level
        target = np.array([jaw, rnd, stretch, press])
        rate_ = np.where(target > self.state, self.attack, self.release)
        self.state = self.state + rate_ * (target - self.state)
        return np.clip(self.state, 0.0, 1.0)

    def track(self, samples: np.ndarray, rate: int, times: np.ndarray) -> np.ndarray:
        """Offline helper: :meth:`frame` at every time in ``times`` (seconds); shape (len, 4)."""
        half = 1.0 / self.fps
        return np.array([self.frame(frame_window(samples, rate, t, half), rate) for t in times]).reshape(-1, 4)
