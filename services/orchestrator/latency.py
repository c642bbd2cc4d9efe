"""Per-turn latency marks and the breakdown reported to users and benchmarks.

All marks are ``time.monotonic()`` seconds. The reference point is the moment the orchestrator sent
the audio frame that holds the end of the user's speech (``speech_end``), found from a short history
of (session-clock time, wall time) pairs of sent frames.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field


class FrameClock:
    """Maps session-clock microseconds of sent user audio to the wall time each frame was sent."""

    def __init__(self, keep: int = 3000) -> None:
        self._ts: deque[int] = deque(maxlen=keep)
        self._wall: deque[float] = deque(maxlen=keep)

    def sent(self, timestamp_us: int, end_us: int, wall: float) -> None:
        """Record that the frame covering [timestamp_us, end_us) was sent at ``wall``."""
        self._ts.append(end_us)
        self._wall.append(wall)

    def wall_at(self, timestamp_us: int) -> float | None:
        """Wall time when audio up to ``timestamp_us`` had been sent (None if unknown)."""
        if not self._ts:
            return None
        i = bisect.bisect_left(list(self._ts), timestamp_us)
        return self._wall[min(i, len(self._wall) - 1)]


@dataclass
class TurnTimer:
    """Marks of one user turn and its reply."""

    speech_end: float | None = None
    end_of_turn: float | None = None
    asr_final: float | None = None
    llm_request: float | None = None
    llm_first_token: float | None = None
    tts_first_audio: float | None = None
    # Time the stage services report for their own work on the critical path (ms).
    server_ms: dict[str, float] = field(default_factory=dict)

    def breakdown(self) -> dict[str, float]:
        """Milliseconds from end of speech to each mark, plus model compute and orchestration overhead."""

        def since(mark: float | None) -> float:
            if mark is None or self.speech_end is None:
                return -1.0
            return round(1000 * (mark - self.speech_end), 1)

        out = {
            "end_of_turn_ms": since(self.end_of_turn),
            "asr_final_ms": since(self.asr_final),
            "llm_first_token_ms": since(self.llm_first_token),
            "tts_first_audio_ms": since(self.tts_first_audio),
        }
        out["total_ms"] = out["tts_first_audio_ms"]
        for key, value in self.server_ms.items():
            out[f"server_{key}_ms"] = round(value, 1)
        stages = ("turn", "asr", "llm", "tts")
        if out["total_ms"] >= 0 and all(s in self.server_ms for s in stages):
            out["model_ms"] = round(sum(self.server_ms[s] for s in stages), 1)
            out["overhead_ms"] = round(out["total_ms"] - out["model_ms"], 1)
        return out
