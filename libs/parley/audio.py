"""Audio primitives: validated decoding of AudioFrame messages, PCM <-> float, resampling, framing, WAV.

All in-memory audio is mono float32 in [-1, 1]. Stage streams carry PCM in ``parley.v1.AudioFrame``.
"""

from __future__ import annotations

import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from parley.errors import InvalidInput
from parley.v1 import common_pb2

MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 48_000
MAX_FRAME_SECONDS = 5.0
"""Largest chunk a stream accepts in one AudioFrame (longer chunks are rejected, not buffered)."""

S16 = common_pb2.AUDIO_ENCODING_PCM_S16LE
F32 = common_pb2.AUDIO_ENCODING_PCM_F32LE


@dataclass(frozen=True)
class Audio:
    """Mono float32 samples with their rate and session-clock start time."""

    samples: np.ndarray
    sample_rate: int
    timestamp_us: int = 0

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def end_us(self) -> int:
        return self.timestamp_us + round(1e6 * len(self.samples) / self.sample_rate)


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Little-endian int16 bytes to float32 in [-1, 1)."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples (clipped to [-1, 1]) to little-endian int16 bytes."""
    clipped = np.clip(np.nan_to_num(samples, nan=0.0), -1.0, 1.0)
    return (clipped * 32767.0).round().astype("<i2").tobytes()


def resample(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """High-quality resampling (soxr); returns float32."""
    if src_rate == dst_rate or len(samples) == 0:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples.astype(np.float32, copy=False), src_rate, dst_rate).astype(np.float32)


class StreamResampler:
    """Resamples consecutive chunks to ``dst_rate`` without clicks at chunk edges.

    One soxr stream per run of chunks at the same input rate carries the filter state across chunks
    (resampling each chunk on its own would leave a discontinuity at every edge). A new input rate, or
    :meth:`flush`, ends the run; the output then holds the filter's delayed tail.
    """

    def __init__(self, dst_rate: int) -> None:
        self.dst_rate = dst_rate
        self.src_rate = 0
        self._stream: soxr.ResampleStream | None = None

    def push(self, samples: np.ndarray, src_rate: int) -> np.ndarray:
        """Resample the next chunk (float32 out; its length varies with the filter delay)."""
        head = self.flush() if src_rate != self.src_rate else None
        if src_rate != self.src_rate:
            self.src_rate = src_rate
            if src_rate != self.dst_rate:
                self._stream = soxr.ResampleStream(src_rate, self.dst_rate, 1, dtype="float32", quality="HQ")
        samples = samples.astype(np.float32, copy=False)
        out = samples if self._stream is None else self._stream.resample_chunk(samples)
        return np.concatenate([head, out]) if head is not None and len(head) else out

    def flush(self) -> np.ndarray:
        """End the current run: the samples still inside the filter (empty when not resampling)."""
        stream, self._stream, self.src_rate = self._stream, None, 0
        if stream is None:
            return np.zeros(0, np.float32)
        return stream.resample_chunk(np.zeros(0, np.float32), last=True)


def decode_frame(
    frame: common_pb2.AudioFrame,
    target_rate: int | None = None,
    max_seconds: float = MAX_FRAME_SECONDS,
) -> Audio:
    """Validate an AudioFrame and return mono float audio, resampled to ``target_rate`` if given.

    Raises InvalidInput (-> INVALID_ARGUMENT) for unsupported rates, encodings or channel counts,
    byte lengths that do not divide into samples, non-finite samples, and chunks over ``max_seconds``.
    """
    rate = frame.sample_rate
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InvalidInput(
            f"audio sample_rate {rate} Hz is outside the supported {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
        )
    channels = frame.channels or 1
    if channels not in (1, 2):
        raise InvalidInput(f"audio channels must be 1 or 2, got {channels}")
    encoding = frame.encoding or S16
    width = {S16: 2, F32: 4}.get(encoding)
    if width is None:
        raise InvalidInput(f"unsupported audio encoding {encoding}")
    if len(frame.data) % (width * channels):
        raise InvalidInput(
            f"audio data length {len(frame.data)} is not a whole number of {channels}-channel "
            f"{8 * width}-bit samples"
        )
    n = len(frame.data) // (width * channels)
    if n > max_seconds * rate:
        raise InvalidInput(f"audio chunk of {n / rate:.2f} s exceeds the {max_seconds:.1f} s limit per frame")
    if encoding == S16:
        samples = pcm16_to_float(frame.data)
    else:
        samples = np.frombuffer(frame.data, dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(samples)):
            raise InvalidInput("audio contains NaN or infinite samples")
        if samples.size and float(np.max(np.abs(samples))) > 1.0 + 1e-3:
            raise InvalidInput("float audio samples must lie in [-1, 1]")
    if channels == 2:
        samples = samples.reshape(-1, 2).mean(axis=1)
    if target_rate and target_rate != rate:
        samples = resample(samples, rate, target_rate)
        rate = target_rate
    return Audio(samples=samples, sample_rate=rate, timestamp_us=frame.timestamp_us)


def encode_frame(samples: np.ndarray, sample_rate: int, timestamp_us: int = 0) -> common_pb2.AudioFrame:
    """Mono float samples to a PCM16 AudioFrame."""
    return common_pb2.AudioFrame(
        data=float_to_pcm16(samples),
        sample_rate=sample_rate,
        channels=1,
        encoding=S16,
        timestamp_us=timestamp_us,
    )


class Framer:
    """Cuts a stream of arbitrary-length chunks into fixed-size frames, tracking session time."""

    def __init__(self, frame_samples: int, sample_rate: int) -> None:
        self.frame_samples = frame_samples
        self.sample_rate = sample_rate
        self._buf = np.zeros(0, np.float32)
        self._next_us: int | None = None

    def push(self, audio: Audio) -> Iterator[Audio]:
        """Add audio; yield every complete frame with its session-clock timestamp."""
        if self._next_us is None or not len(self._buf):
            self._next_us = audio.timestamp_us
        self._buf = np.concatenate([self._buf, audio.samples]) if len(self._buf) else audio.samples
        step = self.frame_samples
        while len(self._buf) >= step:
            frame, self._buf = self._buf[:step], self._buf[step:]
            yield Audio(frame, self.sample_rate, self._next_us)
            self._next_us += round(1e6 * step / self.sample_rate)


def read_wav(path: str | Path) -> Audio:
    """A PCM WAV file (8/16/32-bit, any channels) as mono float audio at its own rate."""
    try:
        with wave.open(str(path), "rb") as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise InvalidInput(f"{path}: not a readable PCM WAV file ({exc})") from exc
    if width == 2:
        samples = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 4:
        samples = np.frombuffer(raw, "<i4").astype(np.float32) / 2147483648.0
    elif width == 1:
        samples = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    else:
        raise InvalidInput(f"{path}: unsupported sample width {width} bytes")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return Audio(samples.astype(np.float32), rate)


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> Path:
    """Write mono float samples as a 16-bit PCM WAV file."""
    path = Path(path)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(float_to_pcm16(samples))
    return path


def rms_dbfs(samples: np.ndarray) -> float:
    """Root-mean-square level in dBFS (-120 for silence)."""
    if not len(samples):
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20 * np.log10(max(rms, 1e-6))
