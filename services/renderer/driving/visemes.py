"""Visemes from phoneme timings: the misaki (Kokoro / hibari) phoneme set mapped to mouth targets, blended
with coarticulation by dominance functions (Cohen & Massaro) and smoothed without lag.

Every phoneme segment ``[start, end)`` pulls the four mouth channels (:data:`MOUTH`) towards its target
with a per-channel *dominance*: flat inside the segment, decaying exponentially before it (anticipation,
time constant ``tau_a``) and after it (carry-over, ``tau_c``). The mouth at time ``t`` is the
dominance-weighted mean of all targets; a zero-phase Gaussian (``smooth_s``) rounds the corners. Because
a clause's timings arrive before its audio plays, the blend may look ahead freely (no causal lag).

* Bilabials (m b p) have a high jaw / lip-press dominance and a long anticipation: the lips close on time
  even between open vowels, and start closing before the consonant.
* Rounded sounds (w u ʊ o ɔ, ʃ ʒ ʧ ʤ, ɹ) have a long anticipation on ``lip_round`` only (anticipatory
  lip rounding spans preceding consonants); ``i``/``e`` stretch, open vowels (ɑ æ a) open the jaw.
* Weak consonants (h, k, g, t, d, n, ...) have low dominance and take the shape of their neighbours.
* Diphthongs (misaki's capital letters A I O W Y Q) glide: the first half aims at the first vowel, the
  second half at the second.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

MOUTH: tuple[str, ...] = ("jaw_open", "lip_round", "lip_stretch", "lip_press")
"""The Controls fields driven by speech, in the order of the arrays below."""

SILENCE = "_"


@dataclass(frozen=True)
class Viseme:
    """Mouth target of one phoneme class and how strongly / how far it coarticulates."""

    jaw: float = 0.0
    round: float = 0.0
    stretch: float = 0.0
    press: float = 0.0
    dominance: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # per MOUTH channel
    tau_a: float = 0.040  # s, anticipation (before the segment)
    tau_c: float = 0.040  # s, carry-over (after the segment)
    round_tau_a: float | None = None  # longer anticipation for lip rounding only

    @property
    def target(self) -> np.ndarray:
        return np.array([self.jaw, self.round, self.stretch, self.press], np.float64)


def _v(jaw=0.0, rnd=0.0, stretch=0.0, press=0.0, dom=(1.0, 1.0, 1.0, 1.0), tau_a=0.04, tau_c=0.04, rtau=None):
    return Viseme(jaw, rnd, stretch, press, dom, tau_a, tau_c, rtau)


# -- classes --------------------------------------------------------------------------------------
BILABIAL = _v(0.0, 0.0, 0.0, 1.0, (5.0, 0.3, 2.0, 5.0), tau_a=0.018, tau_c=0.016)
LABIODENTAL = _v(0.08, 0.0, 0.15, 0.35, (3.0, 0.3, 1.0, 2.0), tau_a=0.025, tau_c=0.020)
DENTAL = _v(0.14, 0.0, 0.15, 0.0, (1.2, 0.3, 0.6, 1.0), tau_a=0.03, tau_c=0.03)
ALVEOLAR = _v(0.16, 0.0, 0.18, 0.0, (0.5, 0.2, 0.5, 1.0), tau_a=0.03, tau_c=0.03)
LATERAL = _v(0.22, 0.0, 0.12, 0.0, (0.4, 0.2, 0.4, 1.0), tau_a=0.03, tau_c=0.03)
SIBILANT = _v(0.08, 0.0, 0.3, 0.0, (1.2, 0.3, 0.8, 1.0), tau_a=0.03, tau_c=0.03)
POSTALVEOLAR = _v(0.1, 0.55, 0.0, 0.0, (1.0, 1.5, 1.0, 1.0), tau_a=0.03, tau_c=0.03, rtau=0.06)
RHOTIC = _v(0.18, 0.35, 0.0, 0.0, (0.5, 1.0, 0.5, 1.0), tau_a=0.03, tau_c=0.03, rtau=0.05)
VELAR = _v(0.22, 0.0, 0.1, 0.0, (0.3, 0.1, 0.3, 1.0), tau_a=0.03, tau_c=0.03)
GLOTTAL = _v(0.25, 0.0, 0.0, 0.0, (0.15, 0.05, 0.05, 0.5))
PALATAL = _v(0.12, 0.0, 0.5, 0.0, (0.5, 0.5, 1.0, 1.0), tau_a=0.03, tau_c=0.03)
LABIAL_GLIDE = _v(0.08, 0.9, 0.0, 0.0, (0.8, 2.0, 2.0, 1.0), tau_a=0.03, tau_c=0.03, rtau=0.05)
SIL = _v(0.0, 0.0, 0.0, 0.0, (1.0, 0.6, 0.6, 0.5), tau_a=0.030, tau_c=0.030)


def _vowel(jaw, rnd=0.0, stretch=0.0, rtau=None):
    return _v(jaw, rnd, stretch, 0.0, (1.0, 1.0 if rnd < 0.3 else 1.6, 1.0, 1.0), tau_a=0.04, tau_c=0.04, rtau=rtau)


VOWELS: dict[str, Viseme] = {
    "i": _vowel(0.22, stretch=0.75),
    "ɪ": _vowel(0.32, stretch=0.5),
    "ᵻ": _vowel(0.3, stretch=0.3),
    "ɨ": _vowel(0.3, stretch=0.3),
    "e": _vowel(0.45, stretch=0.55),
    "ɛ": _vowel(0.52, stretch=0.4),
    "æ": _vowel(0.7, stretch=0.45),
    "a": _vowel(0.85, stretch=0.15),
    "ɑ": _vowel(0.88),
    "ɒ": _vowel(0.78, rnd=0.3),
    "ɔ": _vowel(0.62, rnd=0.6, rtau=0.06),
    "o": _vowel(0.5, rnd=0.7, rtau=0.06),
    "ʌ": _vowel(0.58),
    "ə": _vowel(0.38),
    "ᵊ": _vowel(0.3),
    "ɐ": _vowel(0.48),
    "ɚ": _vowel(0.36, rnd=0.3),
    "ɜ": _vowel(0.42, rnd=0.25),
    "ʊ": _vowel(0.3, rnd=0.65, rtau=0.06),
    "u": _vowel(0.2, rnd=0.9, rtau=0.06),
    "ɯ": _vowel(0.25, stretch=0.2),
    "y": _vowel(0.2, rnd=0.85, rtau=0.06),
    "ø": _vowel(0.35, rnd=0.7, rtau=0.06),
    "œ": _vowel(0.5, rnd=0.6, rtau=0.06),
}
DIPHTHONGS: dict[str, tuple[str, str]] = {
    "A": ("e", "ɪ"),  # eɪ  (day)
    "I": ("a", "ɪ"),  # aɪ  (my)
    "W": ("a", "ʊ"),  # aʊ  (how)
    "Y": ("ɔ", "ɪ"),  # ɔɪ  (boy)
    "O": ("o", "ʊ"),  # oʊ  (go, US)
    "Q": ("ə", "ʊ"),  # əʊ  (go, UK)
}
CONSONANTS: dict[str, Viseme] = {
    **dict.fromkeys("mbpɸβ", BILABIAL),
    **dict.fromkeys("fvʋ", LABIODENTAL),
    **dict.fromkeys("θð", DENTAL),
    **dict.fromkeys("tdnɾʈɖɳTʦʣ", ALVEOLAR),
    **dict.fromkeys("lɫʎ", LATERAL),
    **dict.fromkeys("szɕʑʂʐçʝ", SIBILANT),
    **dict.fromkeys("ʃʒʧʤʨʥS", POSTALVEOLAR),
    **dict.fromkeys("ɹɻrɽʁꭧ", RHOTIC),
    **dict.fromkeys("kgɡŋxɣχɴqɰɤ", VELAR),
    **dict.fromkeys("hʔɦ", GLOTTAL),
    **dict.fromkeys("jɟɲc", PALATAL),
    **dict.fromkeys("wɥ", LABIAL_GLIDE),
}
UNKNOWN = _v(0.3, 0.0, 0.1, 0.0, (0.4, 0.2, 0.2, 0.5))
_IGNORED = frozenset("ˈˌːʰʲ\u0303ᵝ")


def viseme_for(label: str) -> list[Viseme]:
    """The viseme(s) of one phoneme label: one for most, two for a diphthong (first half, second half).

    Labels may carry stress / length marks (hibari folds stress into the next phoneme); those are ignored.
    Multi-character labels (e.g. ``tʃ``, ``eɪ``) are read symbol by symbol.
    """
    if label == SILENCE or not label or label.isspace():
        return [SIL]
    core = [c for c in label if c not in _IGNORED]
    if not core:
        return [SIL]
    out: list[Viseme] = []
    for c in core:
        if c in DIPHTHONGS:
            out += [VOWELS[DIPHTHONGS[c][0]], VOWELS[DIPHTHONGS[c][1]]]
        elif c in VOWELS:
            out.append(VOWELS[c])
        elif c in CONSONANTS:
            out.append(CONSONANTS[c])
        elif c in ",.!?;:—…" or c in "\"()“”":
            out.append(SIL)
        else:
            out.append(UNKNOWN)
    return out


@dataclass(frozen=True)
class Phone:
    """A phoneme on an audio timeline, in seconds."""

    label: str
    start: float
    end: float


def as_phones(items: Iterable[object]) -> list[Phone]:
    """Phones from PhonemeTiming messages, TTS ``Timing`` objects, ``Phone`` or ``(label, start_s, end_s)``.

    Objects with ``start_us``/``end_us`` are read in microseconds; tuples are taken as seconds.
    """
    out = []
    for item in items:
        if isinstance(item, Phone):
            out.append(item)
        elif isinstance(item, tuple | list):
            label, start, end = item
            out.append(Phone(str(label), float(start), float(end)))
        else:
            label = getattr(item, "phoneme", None) or getattr(item, "label", "")
            out.append(Phone(str(label), item.start_us / 1e6, item.end_us / 1e6))
    return out


@dataclass(frozen=True)
class VisemeOptions:
    """Knobs of the viseme blend."""

    smooth_s: float = 0.015  # zero-phase Gaussian sigma applied after the dominance blend
    lead_s: float = 0.0  # show the mouth this much earlier than the audio (visual articulation leads)
    articulation: float = 1.3  # scale of jaw / round / stretch excursions
    step_s: float = 0.005  # internal grid of the blend


class VisemeTrack:
    """Mouth channels over time from phoneme timings; timings may be added clause by clause.

    ``at(t)`` works for any ``t`` (seconds on the timings' timeline); outside the timings the mouth is
    neutral (closed, relaxed).
    """

    _REACH = 0.45  # s: segments farther than this from t are ignored

    def __init__(self, phones: Iterable[object] = (), options: VisemeOptions | None = None) -> None:
        self.options = options or VisemeOptions()
        self._starts: list[float] = []
        self._ends: list[float] = []
        self._targets: list[np.ndarray] = []
        self._dom: list[np.ndarray] = []
        self._tau: list[np.ndarray] = []  # (2, 4): anticipation, carry-over per channel
        self._arrays: tuple[np.ndarray, ...] | None = None
        self._max_len = 0.0
        self.add(phones)

    def __len__(self) -> int:
        return len(self._starts)

    @property
    def end(self) -> float:
        """End of the last segment (0 when empty)."""
        return max(self._ends) if self._ends else 0.0

    def add(self, phones: Iterable[object]) -> None:
        """Add phoneme timings (any order; overlapping clauses are fine)."""
        for p in as_phones(phones):
            if not p.end > p.start:
                continue
            visemes = viseme_for(p.label)
            n = len(visemes)
            edges = np.linspace(p.start, p.end, n + 1)
            for v, a, b in zip(visemes, edges[:-1], edges[1:], strict=True):
                i = bisect.bisect_right(self._starts, a)
                tau = np.array([[v.tau_a] * 4, [v.tau_c] * 4], np.float64)
                if v.round_tau_a is not None:
                    tau[0, 1] = v.round_tau_a
                self._starts.insert(i, float(a))
                self._ends.insert(i, float(b))
                self._targets.insert(i, v.target)
                self._dom.insert(i, np.asarray(v.dominance, np.float64))
                self._tau.insert(i, tau)
                self._max_len = max(self._max_len, float(b - a))
        self._arrays = None

    def clear(self) -> None:
        self.__init__((), self.options)

    def _window(self, lo: float, hi: float) -> tuple[np.ndarray, ...]:
        if self._arrays is None:
            self._arrays = (
                np.asarray(self._starts, np.float64),
                np.asarray(self._ends, np.float64),
                np.asarray(self._targets, np.float64).reshape(-1, 4),
                np.asarray(self._dom, np.float64).reshape(-1, 4),
                np.asarray(self._tau, np.float64).reshape(-1, 2, 4),
            )
        starts, ends, targets, dom, tau = self._arrays
        i = bisect.bisect_left(self._starts, lo - self._max_len)
        j = bisect.bisect_right(self._starts, hi)
        sel = slice(i, j)
        keep = ends[sel] > lo
        return starts[sel][keep], ends[sel][keep], targets[sel][keep], dom[sel][keep], tau[sel][keep]

    def blend(self, times: np.ndarray) -> np.ndarray:
        """Dominance-weighted targets at ``times`` (before smoothing): shape (len(times), 4)."""
        times = np.asarray(times, np.float64)
        out = np.zeros((len(times), 4))
        if not len(times) or not self._starts:
            return out
        lo, hi = float(times.min()) - self._REACH, float(times.max()) + self._REACH
        starts, ends, targets, dom, tau = self._window(lo, hi)
        if not len(starts):
            return out
        t = times[:, None, None]
        before = np.maximum(starts[None, :, None] - t, 0.0)  # (T, N, 1)
        after = np.maximum(t - ends[None, :, None], 0.0)
        d = dom[None] * np.exp(-before / tau[None, :, 0, :] - after / tau[None, :, 1, :])  # (T, N, 4)
        eps = 1e-3  # neutral rest pose with tiny dominance everywhere
        return (d * targets[None]).sum(axis=1) / (d.sum(axis=1) + eps)

    def at(self, times: float | Sequence[float] | np.ndarray) -> np.ndarray:
        """Smoothed mouth channels (:data:`MOUTH`) at ``times``: shape (4,) for a scalar, else (len, 4)."""
        scalar = np.ndim(times) == 0
        ts = np.atleast_1d(np.asarray(times, np.float64)) + self.options.lead_s
        if len(ts) > 64:  # bound the (times x segments) work arrays
            out = np.concatenate([self.at(ts[i : i + 64] - self.options.lead_s) for i in range(0, len(ts), 64)])
            return out
        opts = self.options
        if opts.smooth_s > 0:
            k = int(np.ceil(3 * opts.smooth_s / opts.step_s))
            offsets = np.arange(-k, k + 1) * opts.step_s
            weights = np.exp(-0.5 * (offsets / opts.smooth_s) ** 2)
            weights /= weights.sum()
            grid = (ts[:, None] + offsets[None, :]).reshape(-1)
            vals = self.blend(grid).reshape(len(ts), len(offsets), 4)
            out = np.einsum("tkc,k->tc", vals, weights)
        else:
            out = self.blend(ts)
        out[:, :3] *= opts.articulation
        out[:, 0] *= 1.0 - 0.6 * np.clip((out[:, 3] - 0.3) / 0.7, 0.0, 1.0)  # pressed lips close the jaw too
        out = np.clip(out, 0.0, 1.0)
        return out[0] if scalar else out
