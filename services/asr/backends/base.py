"""The one interface every ASR backend implements, and the result types it returns."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 16_000
"""Backends take mono float32 audio at this rate."""


@dataclass(frozen=True)
class Word:
    """A recognised word; times in seconds from the start of the audio passed to ``transcribe``."""

    word: str
    start_s: float
    end_s: float
    confidence: float = 0.0


@dataclass(frozen=True)
class Recognition:
    """What one decode produced."""

    text: str
    words: list[Word] = field(default_factory=list)
    compute_s: float = 0.0
    language: str = ""


class AsrBackend(abc.ABC):
    """Speech-to-text over whole utterances.

    ``transcribe`` is called from worker threads. Implementations must be thread-safe; the service
    never runs more than :attr:`concurrency` calls at once, so a backend that can only do one decode
    at a time declares ``concurrency = 1``.
    """

    name: str = "base"
    concurrency: int = 1

    def load(self) -> None:  # noqa: B027 - optional hook
        """Load weights / open connections (called once, off the event loop, before serving)."""

    def warmup(self) -> None:
        """Run one throw-away decode so the first real request is not slow."""
        self.transcribe(np.zeros(SAMPLE_RATE, np.float32), "en", word_timestamps=True)

    def check_language(self, language: str) -> None:  # noqa: B027 - optional hook
        """Raise :class:`parley.errors.InvalidInput` when ``language`` cannot be served."""

    @abc.abstractmethod
    def transcribe(self, samples: np.ndarray, language: str, word_timestamps: bool) -> Recognition:
        """Transcribe 16 kHz mono float32 ``samples``.

        ``language`` is an ISO code ('' = let the model detect it). Words carry times relative to the
        start of ``samples`` when ``word_timestamps`` is true (otherwise ``words`` may be empty).
        ``compute_s`` is the wall time of the decode.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


def clean_words(words: list[Word], duration_s: float) -> list[Word]:
    """Strip words, drop empty ones, clamp times into [0, duration] and make them non-decreasing."""
    out: list[Word] = []
    last = 0.0
    for w in words:
        text = w.word.strip()
        if not text:
            continue
        start = min(max(w.start_s, last), duration_s)
        end = min(max(w.end_s, start), duration_s)
        out.append(Word(text, start, end, w.confidence))
        last = start
    return out


def snap_words_to_speech(
    words: list[Word], samples: np.ndarray, silence_dbfs: float = -50.0, floor_below_peak_db: float = 40.0
) -> list[Word]:
    """Tighten word edges that Whisper stretched over silence (it often starts the first word at 0).

    Works on 10 ms windows: a window counts as voiced when it is louder than ``silence_dbfs`` and
    within ``floor_below_peak_db`` of the loudest window. Each word's start/end move inwards to its
    first/last voiced window; words with no voiced window, and all words in uniformly noisy audio, are
    left as they are. Edges only ever move inwards, so a correct timing is never made worse by more
    than the 10 ms window.
    """
    window = SAMPLE_RATE // 100
    n = len(samples) // window
    if not words or n == 0:
        return words
    power = np.mean(np.square(samples[: n * window].reshape(n, window), dtype=np.float64), axis=1)
    level = 10 * np.log10(power + 1e-12)
    voiced = level > max(silence_dbfs, float(level.max()) - floor_below_peak_db)
    out: list[Word] = []
    for w in words:
        a = min(int(w.start_s * 100), n)
        b = min(int(np.ceil(w.end_s * 100)), n)
        hits = np.flatnonzero(voiced[a:b]) if b > a else np.zeros(0, int)
        if not len(hits):
            out.append(w)
            continue
        start = max(w.start_s, (a + hits[0]) / 100)
        end = min(w.end_s, (a + hits[-1] + 1) / 100)
        out.append(Word(w.word, start, max(end, start), w.confidence) if end > start else w)
    return out
