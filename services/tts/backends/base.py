"""The one interface every synthesis backend implements, and the result it returns."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Timing:
    """A labelled span of a clause's audio, in microseconds from the clause's first sample."""

    label: str
    start_us: int
    end_us: int

    def shifted(self, offset_us: int) -> Timing:
        """The same span moved by ``offset_us`` (onto a stream timeline)."""
        return Timing(self.label, self.start_us + offset_us, self.end_us + offset_us)


@dataclass
class Synthesis:
    """One clause's audio with clause-relative timings (empty lists when a backend has none)."""

    audio: np.ndarray
    sample_rate: int
    words: list[Timing] = field(default_factory=list)
    phonemes: list[Timing] = field(default_factory=list)

    @property
    def duration_us(self) -> int:
        return round(1e6 * len(self.audio) / self.sample_rate)


class TtsBackend(abc.ABC):
    """Text of one clause -> audio. Implementations must be safe to call from several threads."""

    name: str = "backend"
    sample_rate: int = 24_000
    """Native output rate in Hz."""
    default_voice: str = ""
    has_timings: bool = False

    def load(self) -> None:  # noqa: B027 - optional hook
        """Load models (called once, on a worker thread, before the service reports SERVING)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""

    @abc.abstractmethod
    def check_voice(self, voice: str) -> str:
        """The voice to use for ``voice`` ("" = default); raise InvalidInput when it is not available."""

    @abc.abstractmethod
    def synthesize(self, text: str, speed: float = 1.0, voice: str = "") -> Synthesis:
        """Speak one clause. Audio is mono float32 in [-1, 1] at ``sample_rate``; timings clause-relative."""
