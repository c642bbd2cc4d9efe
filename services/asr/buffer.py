"""Audio bookkeeping for one ASR stream: a streaming resampler on the session clock and the capped
16 kHz buffer of the current utterance."""

from __future__ import annotations

import logging

import numpy as np

from parley.audio import Audio, StreamResampler

from .backends.base import SAMPLE_RATE

log = logging.getLogger("parley.asr.buffer")

GAP_US = 50_000
"""A frame starting more than this after the previous one ended opens a gap (filled with silence)."""


CLOCK_RESET_US = 10_000_000
"""Audio stamped this far before the end of the last utterance means the client restarted its clock."""


def us_to_samples(us: int) -> int:
    return round(us * SAMPLE_RATE / 1_000_000)


def samples_to_us(n: int) -> int:
    return round(n * 1_000_000 / SAMPLE_RATE)


def peak_dbfs(samples: np.ndarray, window: int = SAMPLE_RATE // 50) -> float:
    """Level of the loudest ``window``-sample (20 ms) stretch, in dBFS (-120 for silence/empty)."""
    if not len(samples):
        return -120.0
    n = len(samples) // window * window
    if n:
        power = np.mean(np.square(samples[:n].reshape(-1, window), dtype=np.float64), axis=1).max()
    else:
        power = 0.0
    if n < len(samples):
        power = max(power, float(np.mean(np.square(samples[n:], dtype=np.float64))))
    return float(10 * np.log10(max(power, 1e-12)))


class AudioInput:
    """Turns validated frames at any rate into contiguous 16 kHz samples with session-clock times.

    One soxr stream per run of frames at the same rate keeps resampling seamless across 20 ms frames
    (one-shot resampling per frame would click at every frame edge). ``timestamp_us == 0`` on a later
    frame means "right after the previous one".
    """

    def __init__(self) -> None:
        self._rate = 0
        self._resampler = StreamResampler(SAMPLE_RATE)
        self._origin_us = 0  # session time of the first input sample of the current run
        self._in_count = 0  # input samples in the current run
        self._out_count = 0  # 16 kHz samples emitted for the current run

    @property
    def next_us(self) -> int:
        """Session time right after the last input sample."""
        return self._origin_us + round(self._in_count * 1_000_000 / self._rate) if self._rate else 0

    def push(self, audio: Audio) -> list[tuple[np.ndarray, int]]:
        """Add one frame; returns ``(samples_16k, start_us)`` chunks ready for the utterance buffer."""
        out: list[tuple[np.ndarray, int]] = []
        ts = audio.timestamp_us
        contiguous = self._rate == audio.sample_rate and (ts == 0 or abs(ts - self.next_us) <= GAP_US)
        if not contiguous:
            out.extend(self._flush())
            next_us = self.next_us if self._rate else self._origin_us
            self._rate = audio.sample_rate
            self._origin_us = ts if ts else next_us
            self._in_count = self._out_count = 0
        self._in_count += len(audio.samples)
        samples = self._resampler.push(audio.samples, self._rate)
        if len(samples):
            out.append((samples, self._origin_us + samples_to_us(self._out_count)))
            self._out_count += len(samples)
        return out

    def reset(self) -> None:
        """Forget the resampler state (RESET): audio still inside the filter is dropped."""
        self._resampler = StreamResampler(SAMPLE_RATE)
        self._rate = 0
        self._in_count = self._out_count = 0

    def _flush(self) -> list[tuple[np.ndarray, int]]:
        tail = self._resampler.flush()
        if not len(tail):
            return []
        start = self._origin_us + samples_to_us(self._out_count)
        self._out_count += len(tail)
        return [(tail, start)]


class UtteranceBuffer:
    """The 16 kHz audio of the current utterance, anchored on the session clock.

    Capped at ``max_seconds``: beyond it the *oldest* audio is dropped (a sliding window), so a stream
    that never finalizes keeps working and its final covers the last ``max_seconds``.
    """

    def __init__(self, max_seconds: float = 30.0) -> None:
        self.max_samples = int(max_seconds * SAMPLE_RATE)
        self._data = np.zeros(min(SAMPLE_RATE * 4, self.max_samples), np.float32)
        self._n = 0
        self.start_us = 0
        self.not_before_us: int | None = None  # audio before this belongs to a finished utterance
        self.trimmed_samples = 0  # dropped by the cap in this utterance

    def __len__(self) -> int:
        return self._n

    @property
    def samples(self) -> np.ndarray:
        """A read-only view of the buffered samples (copy before keeping it across appends)."""
        view = self._data[: self._n]
        view.flags.writeable = False
        return view

    @property
    def end_us(self) -> int:
        return self.start_us + samples_to_us(self._n)

    @property
    def duration_s(self) -> float:
        return self._n / SAMPLE_RATE

    def index_at(self, us: int) -> int:
        """Sample index of session time ``us``, clipped to the buffer."""
        return min(max(us_to_samples(us - self.start_us), 0), self._n)

    def time_at(self, index: int) -> int:
        """Session time of sample ``index``."""
        return self.start_us + samples_to_us(index)

    def copy(self, end_index: int | None = None) -> np.ndarray:
        """A copy of the samples up to ``end_index`` (all when None)."""
        end = self._n if end_index is None else min(max(end_index, 0), self._n)
        return self._data[:end].copy()

    def append(self, samples: np.ndarray, start_us: int) -> None:
        """Add samples that start at session time ``start_us`` (gaps are filled with silence)."""
        if self.not_before_us is not None and start_us < self.not_before_us - CLOCK_RESET_US:
            log.warning(
                "audio timestamps went back; treating it as a new session clock",
                extra={"timestamp_us": start_us, "expected_from_us": self.not_before_us},
            )
            self.not_before_us = None
        if self.not_before_us is not None:
            skip = us_to_samples(self.not_before_us - start_us)
            if skip >= len(samples):
                return
            if skip > 0:
                samples, start_us = samples[skip:], start_us + samples_to_us(skip)
        if not self._n:
            self.start_us = start_us
        else:
            gap = start_us - self.end_us
            if gap > GAP_US:
                self._write(np.zeros(min(us_to_samples(gap), self.max_samples), np.float32))
        self._write(samples)

    def _write(self, samples: np.ndarray) -> None:
        if not len(samples):
            return
        need = self._n + len(samples)
        if need > self.max_samples:
            if not self.trimmed_samples:
                log.warning(
                    "utterance exceeds the buffer cap; dropping its oldest audio",
                    extra={"max_s": self.max_samples / SAMPLE_RATE},
                )
            if len(samples) >= self.max_samples:
                drop = need - self.max_samples
                self._data[: self.max_samples] = samples[-self.max_samples :]
                self._n = self.max_samples
                self.start_us += samples_to_us(drop)
                self.trimmed_samples += drop
                return
            self._drop_first(need - self.max_samples, trimmed=True)
            need = self._n + len(samples)
        if need > len(self._data):
            grown = np.zeros(min(max(need, 2 * len(self._data)), self.max_samples), np.float32)
            grown[: self._n] = self._data[: self._n]
            self._data = grown
        self._data[self._n : need] = samples
        self._n = need

    def _drop_first(self, count: int, trimmed: bool = False) -> None:
        count = min(max(count, 0), self._n)
        if not count:
            return
        remaining = self._n - count
        self._data[:remaining] = self._data[count : self._n]
        self._n = remaining
        self.start_us += samples_to_us(count)
        if trimmed:
            self.trimmed_samples += count

    def drop_before(self, us: int) -> None:
        """Start a new utterance at session time ``us``: earlier audio, buffered or still to come, is
        forgotten; later audio is kept."""
        self.not_before_us = us
        self.trimmed_samples = 0
        if us <= self.start_us:
            return
        if us >= self.end_us:
            self._n = 0
            return
        self._drop_first(us_to_samples(us - self.start_us))
        self.start_us = us

    def clear(self) -> None:
        """Drop everything (RESET); the next append sets the start time."""
        self._n = 0
        self.trimmed_samples = 0
