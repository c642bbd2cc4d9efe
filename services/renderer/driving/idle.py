"""Life while not (only) talking: blinks, small head and gaze motion, nods at the user's pauses.

Everything here is a function of time with a seeded random schedule, so a replay is identical. It never
touches the mouth channels.

* Blinks: every 2-6 s (uniform), ~150 ms (50 ms closing, 100 ms opening), now and then a double blink.
* Head / gaze: smooth noise (a few incommensurate sinusoids with random phases per channel), with an
  amplitude that depends on the mode and eases over ~1 s when the mode changes: calm and attentive while
  listening, a bit livelier while speaking, wandering gaze when idle.
* Nods: :meth:`IdleMotion.nod` (the user paused) adds one smooth down-and-up of the head, ~0.7 s.
"""

from __future__ import annotations

import bisect
import enum
import math

import numpy as np

from services.renderer.controls import CONTROL_NAMES

IDX = {name: i for i, name in enumerate(CONTROL_NAMES)}


class Mode(enum.Enum):
    IDLE = "idle"
    LISTENING = "listening"
    SPEAKING = "speaking"


# amplitude (radians for head, -1..1 for gaze) of the smooth noise per mode
AMPLITUDE: dict[Mode, dict[str, float]] = {
    Mode.IDLE: {"head_yaw": 0.05, "head_pitch": 0.03, "head_roll": 0.02, "gaze_x": 0.25, "gaze_y": 0.12},
    Mode.LISTENING: {"head_yaw": 0.03, "head_pitch": 0.02, "head_roll": 0.015, "gaze_x": 0.06, "gaze_y": 0.04},
    Mode.SPEAKING: {"head_yaw": 0.06, "head_pitch": 0.04, "head_roll": 0.025, "gaze_x": 0.1, "gaze_y": 0.06},
}
NOISE_CHANNELS = ("head_yaw", "head_pitch", "head_roll", "gaze_x", "gaze_y")


def blink_shape(x: float, close_s: float = 0.05, open_s: float = 0.10) -> float:
    """Eyelid closure (0..1) ``x`` seconds after a blink starts."""
    if x < 0 or x >= close_s + open_s:
        return 0.0
    if x < close_s:
        u = x / close_s
        return u * u * (3 - 2 * u)
    u = (x - close_s) / open_s
    return 1.0 - u * u * (3 - 2 * u)


def nod_shape(x: float) -> float:
    """Head pitch profile of one nod (0..1 over 0 <= x <= 1, zero slope at both ends)."""
    if x <= 0 or x >= 1:
        return 0.0
    return math.sin(math.pi * x) ** 2


class IdleMotion:
    """Blinks, head and gaze motion and nods as control offsets over time."""

    def __init__(self, seed: int = 0, blink_interval_s: tuple[float, float] = (2.0, 6.0),
                 blink_s: float = 0.15, nod_s: float = 0.7, nod_pitch: float = 0.12,
                 mode_ease_s: float = 1.0) -> None:
        self.rng = np.random.default_rng(seed)
        self.blink_interval_s = blink_interval_s
        self.blink_close_s = blink_s / 3
        self.blink_open_s = blink_s - self.blink_close_s
        self.nod_s = nod_s
        self.nod_pitch = nod_pitch
        self.mode_ease_s = mode_ease_s
        self.mode = Mode.IDLE
        self._amp_from = dict(AMPLITUDE[Mode.IDLE])
        self._mode_t0 = -1e9
        self._blinks: list[float] = [float(self.rng.uniform(0.5, blink_interval_s[1]))]
        self._nods: list[tuple[float, float]] = []
        # 3 sinusoids per noise channel: frequencies 0.05..0.4 Hz, random phases, weights summing to 1
        self._freqs = self.rng.uniform(0.05, 0.4, size=(len(NOISE_CHANNELS), 3))
        self._phases = self.rng.uniform(0, 2 * np.pi, size=(len(NOISE_CHANNELS), 3))
        w = self.rng.uniform(0.5, 1.0, size=(len(NOISE_CHANNELS), 3))
        self._weights = w / w.sum(axis=1, keepdims=True)

    # -- events ---------------------------------------------------------------------------------
    def set_mode(self, mode: Mode, now: float) -> None:
        if mode == self.mode:
            return
        self._amp_from = self._amplitudes(now)
        self._mode_t0 = now
        self.mode = mode

    def nod(self, now: float, strength: float = 1.0) -> None:
        """Start a nod at ``now`` (a nod already under way is not restarted within its first half)."""
        if self._nods and now - self._nods[-1][0] < 0.5 * self.nod_s:
            return
        self._nods.append((now, float(strength)))
        self._nods = [n for n in self._nods if now - n[0] < 2 * self.nod_s]

    # -- evaluation -----------------------------------------------------------------------------
    def _amplitudes(self, t: float) -> dict[str, float]:
        x = min(max((t - self._mode_t0) / self.mode_ease_s, 0.0), 1.0)
        w = x * x * (3 - 2 * x)
        target = AMPLITUDE[self.mode]
        return {k: self._amp_from[k] + (target[k] - self._amp_from[k]) * w for k in NOISE_CHANNELS}

    def _blink_at(self, t: float) -> float:
        while self._blinks[-1] < t + 1.0:  # extend the schedule past t
            last = self._blinks[-1]
            if self.rng.random() < 0.1:
                self._blinks.append(last + 0.3)  # double blink
            self._blinks.append(self._blinks[-1] + float(self.rng.uniform(*self.blink_interval_s)))
        i = bisect.bisect_right(self._blinks, t) - 1
        if i < 0:
            return 0.0
        return blink_shape(t - self._blinks[i], self.blink_close_s, self.blink_open_s)

    def blink_times(self, until: float) -> list[float]:
        """Blink start times scheduled up to ``until`` (extends the schedule)."""
        self._blink_at(until)
        return [b for b in self._blinks if b <= until]

    def at(self, t: float) -> np.ndarray:
        """Offsets for blink, gaze and head channels at ``t`` (seconds), CONTROL_NAMES order."""
        out = np.zeros(len(CONTROL_NAMES))
        amps = self._amplitudes(t)
        noise = (self._weights * np.sin(2 * np.pi * self._freqs * t + self._phases)).sum(axis=1)
        for k, name in enumerate(NOISE_CHANNELS):
            out[IDX[name]] = amps[name] * noise[k]
        blink = self._blink_at(t)
        out[IDX["blink_left"]] = blink
        out[IDX["blink_right"]] = blink
        for t0, strength in self._nods:
            out[IDX["head_pitch"]] += self.nod_pitch * strength * nod_shape((t - t0) / self.nod_s)
        return out
