"""Per-frame Controls from speech + emotion + listening / idle behaviour.

* :class:`SpeechTrack` - one utterance (a reply): its audio from sample 0 and its word / phoneme timings on
  the same timeline, added as they arrive. ``mouth(u)`` is the mouth at utterance time ``u``: visemes
  from the phoneme timings (jaw scaled by the audio loudness), or the audio-only fallback when the
  utterance has no timings.
* :class:`Timeline` - the face over session time at a fixed fps. Each :meth:`Timeline.next` call yields
  the Controls of the next video frame, given the speech mouth for that frame (or None when no speech
  plays). Emotion, mode and nods are events applied at the current frame time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from services.renderer.controls import CONTROL_NAMES, CONTROL_RANGES, Controls
from services.renderer.driving.audio import AudioMouth, Loudness, frame_window, window_rms_db
from services.renderer.driving.emotion import MOUTH_IDX, Emotion, EmotionState
from services.renderer.driving.idle import IdleMotion, Mode
from services.renderer.driving.visemes import VisemeOptions, VisemeTrack, as_phones

_LO = np.array([CONTROL_RANGES[n][0] for n in CONTROL_NAMES])
_HI = np.array([CONTROL_RANGES[n][1] for n in CONTROL_NAMES])


@dataclass(frozen=True)
class DrivingOptions:
    """Tuning of the whole driving stack (defaults are what the service uses)."""

    fps: float = 30.0
    seed: int = 0
    visemes: VisemeOptions = field(default_factory=VisemeOptions)
    energy_weight: float = 0.8  # share of the viseme jaw that follows the audio loudness
    loudness_window_s: float = 0.02  # half-window of the loudness measurement around a frame
    emotion_transition_s: float = 0.6  # default emotion change duration
    min_emotion_transition_s: float = 0.35
    speaking_emotion_mouth: float = 0.4  # share of an emotion's mouth offsets kept while speaking
    mouth_release: float = 0.5  # per-frame decay of the mouth when speech stops abruptly (barge-in)


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float


class SpeechTrack:
    """The audio and timings of one utterance, on the utterance's own timeline (seconds from sample 0)."""

    def __init__(self, sample_rate: int, options: DrivingOptions | None = None) -> None:
        self.options = options or DrivingOptions()
        self.sample_rate = sample_rate
        self.visemes = VisemeTrack(options=self.options.visemes)
        self.words: list[Word] = []
        self._buf = np.zeros(0, np.float32)  # capacity grows by doubling; valid samples: [:_n]
        self._n = 0
        self.loudness = Loudness(decay_db_per_s=0.0)
        self.fallback = AudioMouth(self.options.fps)
        self._peak_block = round(0.04 * sample_rate)
        self._peak_pos = 0

    # -- input ----------------------------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return self._n

    @property
    def duration_s(self) -> float:
        return self._n / self.sample_rate

    @property
    def has_timings(self) -> bool:
        return len(self.visemes) > 0

    def add_audio(self, samples: np.ndarray, start_s: float | None = None) -> None:
        """Append audio; with ``start_s`` past the current end the gap is filled with silence."""
        samples = np.asarray(samples, np.float32).reshape(-1)
        if start_s is not None:
            gap = round(start_s * self.sample_rate) - self._n
            if gap > 0:
                self._append(np.zeros(gap, np.float32))
            elif gap < 0:  # overlapping resend: keep what we have, take only the new tail
                samples = samples[-gap:]
        if len(samples):
            self._append(samples)
        self._update_peak()

    def _append(self, samples: np.ndarray) -> None:
        need = self._n + len(samples)
        if need > len(self._buf):
            grown = np.zeros(max(need, 2 * len(self._buf), 4096), np.float32)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n : need] = samples
        self._n = need

    def _buffer(self) -> np.ndarray:
        return self._buf[: self._n]

    def samples(self, start: int, end: int) -> np.ndarray:
        """Audio samples ``[start, end)`` (zeros beyond what has arrived)."""
        buf = self._buffer()
        out = np.zeros(max(0, end - start), np.float32)
        a, b = max(start, 0), min(end, len(buf))
        if b > a:
            out[a - start : b - start] = buf[a:b]
        return out

    def _update_peak(self) -> None:
        buf = self._buffer()
        blk = self._peak_block
        while self._peak_pos + blk <= len(buf):
            self.loudness.observe_peak(window_rms_db(buf[self._peak_pos : self._peak_pos + blk]))
            self._peak_pos += blk

    def add_timings(self, phonemes: Iterable[object] = (), words: Iterable[object] = ()) -> None:
        """Add phoneme and word timings (PhonemeTiming / WordTiming messages, TTS Timing, or tuples in s)."""
        self.visemes.add(as_phones(phonemes))
        for w in words:
            if isinstance(w, tuple | list):
                self.words.append(Word(str(w[0]), float(w[1]), float(w[2])))
            else:
                label = getattr(w, "word", None) or getattr(w, "label", "")
                self.words.append(Word(str(label), w.start_us / 1e6, w.end_us / 1e6))
        self.words.sort(key=lambda w: w.start)

    def words_until(self, u: float) -> list[Word]:
        """Words that had started by utterance time ``u`` (the last may be cut short)."""
        return [w for w in self.words if w.start < u]

    # -- output ---------------------------------------------------------------------------------
    def level(self, u: float) -> float:
        """Loudness 0..1 around utterance time ``u``."""
        win = frame_window(self._buffer(), self.sample_rate, u, self.options.loudness_window_s)
        return self.loudness.level(window_rms_db(win))

    def mouth(self, u: float) -> np.ndarray:
        """Mouth channels (jaw, round, stretch, press) at utterance time ``u``. Call in time order."""
        if self.has_timings:
            m = np.array(self.visemes.at(u), np.float64)
            w = self.options.energy_weight
            m[0] *= (1.0 - w) + w * self.level(u)
            return m
        win = frame_window(self._buffer(), self.sample_rate, u, 1.0 / self.options.fps)
        return self.fallback.frame(win, self.sample_rate)


class Timeline:
    """Controls per video frame: idle/listening motion + emotion + the speech mouth."""

    def __init__(self, options: DrivingOptions | None = None, emotion: Emotion | str = Emotion.NEUTRAL,
                 intensity: float = 0.0, mode: Mode = Mode.IDLE) -> None:
        self.options = options or DrivingOptions()
        o = self.options
        self.fps = o.fps
        self.index = 0
        self.emotion = EmotionState(o.emotion_transition_s, o.min_emotion_transition_s)
        if intensity:
            self.emotion.set(emotion, intensity, now=-10.0)  # already in place at frame 0
        self.idle = IdleMotion(seed=o.seed)
        self.mode = mode  # requested mode; SPEAKING is used while speech plays
        self.idle.set_mode(mode, -10.0)
        self._mouth = np.zeros(4)
        self._activity = 0.0

    @property
    def now(self) -> float:
        """Session time (s) of the next frame."""
        return self.index / self.fps

    def set_emotion(self, emotion: Emotion | str, intensity: float, transition_s: float | None = None) -> None:
        self.emotion.set(emotion, intensity, self.now, transition_s)

    def set_mode(self, mode: Mode) -> None:
        self.mode = mode

    def nod(self, strength: float = 1.0) -> None:
        self.idle.nod(self.now, strength)

    def skip(self, frames: int = 1) -> None:
        """Advance without producing frames (dropped frames keep the clock)."""
        self.index += frames

    def next(self, mouth: np.ndarray | None = None) -> Controls:
        """Controls of the next frame; ``mouth`` = speech mouth channels for it, None when silent."""
        t = self.now
        speaking = mouth is not None
        self.idle.set_mode(Mode.SPEAKING if speaking else self.mode, t)
        if speaking:
            self._mouth = np.asarray(mouth, np.float64)
        else:
            self._mouth = self._mouth * self.options.mouth_release
            self._mouth[self._mouth < 0.01] = 0.0
        self._activity += ((1.0 if speaking else 0.0) - self._activity) * 0.25
        values = self.idle.at(t)
        emo = self.emotion.at(t)
        keep = 1.0 - (1.0 - self.options.speaking_emotion_mouth) * self._activity
        emo[MOUTH_IDX] *= keep
        values += emo
        values[MOUTH_IDX] += self._mouth
        self.index += 1
        return Controls.from_array(np.clip(values, _LO, _HI))


def speech_controls(track: SpeechTrack, options: DrivingOptions | None = None, emotion: Emotion | str = "neutral",
                    intensity: float = 0.0, frames: int | None = None, mode: Mode = Mode.LISTENING) -> list[Controls]:
    """Offline: Controls for every frame of ``track`` (speech from frame 0), ``frames`` long (default: the audio)."""
    options = options or track.options
    n = frames if frames is not None else int(np.ceil(track.duration_s * options.fps))
    timeline = Timeline(options, emotion, intensity, mode)
    out = []
    for k in range(n):
        u = k / options.fps
        out.append(timeline.next(track.mouth(u) if u < track.duration_s else None))
    return out
