"""Whisper-style log-mel features for smart-turn v3 (numpy only).

Equivalent to ``transformers.WhisperFeatureExtractor(chunk_length=8)`` with ``do_normalize=True`` on
exactly 8 s of 16 kHz audio: waveform zero-mean/unit-variance normalisation, 400-point periodic Hann
STFT with hop 160 (reflect-padded, centred), power spectrum, 80 Slaney mel filters (0-8 kHz),
log10 with a floor, dynamic range clamped to 8 (i.e. 80 dB), scaled as (x + 4) / 4, last frame dropped.
Result: float32 (80, 800). The smart-turn model takes it as ``input_features`` [batch, 80, 800].
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160
N_MELS = 80
N_SAMPLES = 8 * SAMPLE_RATE
N_FRAMES = N_SAMPLES // HOP  # 800


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    freq = np.atleast_1d(np.asarray(freq, dtype=np.float64))
    mels = 3.0 * freq / 200.0
    high = freq >= 1000.0
    mels[high] = 15.0 + np.log(freq[high] / 1000.0) * (27.0 / np.log(6.4))
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.atleast_1d(np.asarray(mels, dtype=np.float64))
    freq = 200.0 * mels / 3.0
    high = mels >= 15.0
    freq[high] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels[high] - 15.0))
    return freq


@lru_cache(maxsize=1)
def mel_filters() -> np.ndarray:
    """Slaney-normalised triangular filterbank, shape (N_MELS, N_FFT // 2 + 1)."""
    fft_freqs = np.linspace(0, SAMPLE_RATE // 2, N_FFT // 2 + 1)
    mel_points = np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([SAMPLE_RATE / 2]))[0], N_MELS + 2)
    hz_points = _mel_to_hz(mel_points)
    diff = np.diff(hz_points)
    slopes = hz_points[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    filters *= (2.0 / (hz_points[2 : N_MELS + 2] - hz_points[:N_MELS]))[None, :]
    return filters.T.copy()


@lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    return np.hanning(N_FFT + 1)[:-1]


def log_mel(audio: np.ndarray) -> np.ndarray:
    """Log-mel features (80, 800) float32 of 16 kHz audio, padded at the end / truncated to 8 s."""
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    if len(x) < N_SAMPLES:
        x = np.pad(x, (0, N_SAMPLES - len(x)))
    x = x[:N_SAMPLES]
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), (N_FFT // 2, N_FFT // 2), mode="reflect")
    frames = sliding_window_view(padded, N_FFT)[::HOP]
    power = np.abs(np.fft.rfft(frames * _hann(), axis=-1)) ** 2  # (801, 201)
    mel = np.maximum(1e-10, mel_filters() @ power.T)  # (80, 801)
    spec = np.log10(mel)[:, :-1]
    spec = np.maximum(spec, spec.max() - 8.0)
    return ((spec + 4.0) / 4.0).astype(np.float32)
