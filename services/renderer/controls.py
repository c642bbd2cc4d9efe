"""The facial rig's controls: the one vocabulary shared by replica building, driving and rasterizing.

A frame of animation is a :class:`Controls` value. Driving code (visemes, emotion, listening) produces
them over time; a replica's rig turns them into deformed Gaussians; a rasterizer draws those.
All values are floats; ranges are given per field and enforced by :meth:`Controls.clamped`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


@dataclass
class Controls:
    """One pose of the face. Neutral is all zeros."""

    jaw_open: float = 0.0       # 0 closed .. 1 fully open
    lip_round: float = 0.0      # 0 .. 1 (oo / w: lips pushed forward, mouth narrower)
    lip_stretch: float = 0.0    # 0 .. 1 (ee: mouth wider, lips thinner)
    lip_press: float = 0.0      # 0 .. 1 (m / b / p: lips pressed together)
    smile: float = 0.0          # -1 frown (corners down) .. 1 smile (corners up)
    brow_raise: float = 0.0     # -1 furrowed / lowered .. 1 raised
    blink_left: float = 0.0     # 0 open .. 1 closed
    blink_right: float = 0.0    # 0 open .. 1 closed
    gaze_x: float = 0.0         # -1 .. 1 (image left .. right)
    gaze_y: float = 0.0         # -1 .. 1 (down .. up)
    head_yaw: float = 0.0       # radians, about -0.5 .. 0.5
    head_pitch: float = 0.0     # radians, about -0.4 .. 0.4 (positive = nod down)
    head_roll: float = 0.0      # radians, about -0.3 .. 0.3

    def as_array(self) -> np.ndarray:
        """Values in field order (see :data:`CONTROL_NAMES`)."""
        return np.array([getattr(self, n) for n in CONTROL_NAMES], dtype=np.float32)

    @classmethod
    def from_array(cls, values: np.ndarray) -> Controls:
        return cls(**{n: float(v) for n, v in zip(CONTROL_NAMES, values, strict=True)})

    def clamped(self) -> Controls:
        """A copy with every value inside its range."""
        out = {}
        for name in CONTROL_NAMES:
            lo, hi = CONTROL_RANGES[name]
            out[name] = float(np.clip(getattr(self, name), lo, hi))
        return Controls(**out)

    def blend(self, other: Controls, weight: float) -> Controls:
        """Linear mix: ``(1 - weight) * self + weight * other``."""
        return Controls.from_array((1 - weight) * self.as_array() + weight * other.as_array())


CONTROL_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Controls))
CONTROL_RANGES: dict[str, tuple[float, float]] = {
    "jaw_open": (0.0, 1.0), "lip_round": (0.0, 1.0), "lip_stretch": (0.0, 1.0), "lip_press": (0.0, 1.0),
    "smile": (-1.0, 1.0), "brow_raise": (-1.0, 1.0), "blink_left": (0.0, 1.0), "blink_right": (0.0, 1.0),
    "gaze_x": (-1.0, 1.0), "gaze_y": (-1.0, 1.0),
    "head_yaw": (-0.5, 0.5), "head_pitch": (-0.4, 0.4), "head_roll": (-0.3, 0.3),
}
