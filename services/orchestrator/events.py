"""What a conversation reports to whoever hosts it (CLI, gateway data channel, event stream)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from parley.audio import Audio


@dataclass
class Event:
    """Base of every conversation event; ``wall_time`` is time.monotonic() when it was emitted."""

    wall_time: float

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (audio samples are summarised, not included)."""
        out = {"kind": self.kind}
        for key, value in asdict(self).items():
            if isinstance(value, dict) and "samples" in value:
                audio = getattr(self, key)
                value = {"duration_s": round(audio.duration_s, 3), "sample_rate": audio.sample_rate}
            out[key] = value
        return out


@dataclass
class UserSpeechStarted(Event):
    speech_start_us: int


@dataclass
class UserSpeechStopped(Event):
    speech_end_us: int


@dataclass
class EndOfTurnDetected(Event):
    probability: float
    reason: str
    speech_end_us: int


@dataclass
class UserTranscript(Event):
    text: str
    final: bool
    turn_id: int = 0


@dataclass
class ReplyText(Event):
    """A piece of the reply text as the LLM produces it."""

    turn_id: int
    delta: str


@dataclass
class ReplyAudio(Event):
    """Reply speech; ``offset_us`` is its place on the reply's own timeline (0 = first sample)."""

    turn_id: int
    audio: Audio
    offset_us: int
    text: str = ""
    words: list[dict[str, Any]] = field(default_factory=list)
    phonemes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ReplyDone(Event):
    turn_id: int
    user_text: str
    reply_text: str
    latency: dict[str, float]


@dataclass
class ReplyInterrupted(Event):
    """The user barged in: stop playing ``turn_id`` at once; ``heard_text`` is what was played."""

    turn_id: int
    heard_text: str
    played_us: int


@dataclass
class StageFailed(Event):
    """A stage stream ended with an error; the conversation cannot go on without it."""

    stage: str
    code: str
    message: str
