"""Emotions as offsets on the rig controls, with smooth transitions between them.

An emotion at intensity 1 adds :data:`EMOTION_OFFSETS` to the pose; intensity scales it. Changing emotion
(or intensity) eases from the *current* offset (even mid-transition) to the new one with a smoothstep over
the transition time, never shorter than ``min_transition_s``, so no frame jumps.
"""

from __future__ import annotations

import enum
import math

import numpy as np

from services.renderer.controls import CONTROL_NAMES, Controls


class Emotion(enum.Enum):
    NEUTRAL = "neutral"
    JOY = "joy"
    SORROW = "sorrow"
    ANGER = "anger"
    SURPRISE = "surprise"

    @classmethod
    def parse(cls, value: str | Emotion) -> Emotion:
        """An Emotion from its name (case-insensitive); ValueError for anything else."""
        if isinstance(value, Emotion):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise ValueError(f"unknown emotion {value!r}; expected one of {', '.join(e.value for e in cls)}") from None


EMOTION_OFFSETS: dict[Emotion, Controls] = {
    Emotion.NEUTRAL: Controls(),
    # smile up, a little brow lift, cheeks widen the mouth, chin slightly up
    Emotion.JOY: Controls(smile=0.85, brow_raise=0.2, lip_stretch=0.15, head_pitch=-0.03),
    # mouth corners down, inner brows up (the rig's one brow control), gaze and head drop, lids heavy
    Emotion.SORROW: Controls(smile=-0.7, brow_raise=0.3, gaze_y=-0.25, head_pitch=0.07, blink_left=0.15,
                             blink_right=0.15),
    # brows down, lips pressed, corners slightly down, chin down
    Emotion.ANGER: Controls(brow_raise=-0.85, lip_press=0.45, smile=-0.25, head_pitch=0.04),
    # brows up, jaw drops a little, head back
    Emotion.SURPRISE: Controls(brow_raise=0.95, jaw_open=0.22, lip_round=0.1, head_pitch=-0.05),
}
MOUTH_IDX = [CONTROL_NAMES.index(n) for n in ("jaw_open", "lip_round", "lip_stretch", "lip_press")]


def smoothstep(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


class EmotionState:
    """The current emotional expression over time (an offset array in CONTROL_NAMES order)."""

    def __init__(self, default_transition_s: float = 0.6, min_transition_s: float = 0.2) -> None:
        self.default_transition_s = default_transition_s
        self.min_transition_s = min_transition_s
        self.emotion = Emotion.NEUTRAL
        self.intensity = 0.0
        self._from = np.zeros(len(CONTROL_NAMES))
        self._to = np.zeros(len(CONTROL_NAMES))
        self._t0 = 0.0
        self._dur = min_transition_s

    @staticmethod
    def offset(emotion: Emotion, intensity: float) -> np.ndarray:
        return EMOTION_OFFSETS[emotion].as_array().astype(np.float64) * intensity

    def set(self, emotion: Emotion | str, intensity: float, now: float, transition_s: float | None = None) -> None:
        """Move to ``emotion`` at ``intensity`` (0..1), starting at ``now`` (seconds)."""
        emotion = Emotion.parse(emotion)
        if not (isinstance(intensity, int | float) and math.isfinite(intensity) and 0.0 <= intensity <= 1.0):
            raise ValueError(f"emotion intensity must be within 0..1, got {intensity!r}")
        if transition_s is not None and (not math.isfinite(transition_s) or transition_s < 0):
            raise ValueError(f"transition must be a non-negative number of seconds, got {transition_s!r}")
        self._from = self.at(now)
        self._to = self.offset(emotion, intensity)
        self._t0 = now
        self._dur = max(self.min_transition_s, self.default_transition_s if transition_s is None else transition_s)
        self.emotion, self.intensity = emotion, float(intensity)

    def at(self, t: float) -> np.ndarray:
        w = smoothstep((t - self._t0) / self._dur)
        return self._from + (self._to - self._from) * w
