"""Phoneme and word timings from a duration predictor's per-symbol frame counts (pure numpy logic).

Pipeline (:func:`align`):

1. **Segments** - every model input symbol (pads, phonemes, spaces, stress marks, punctuation) gets
   ``duration * frame_samples`` samples, contiguous from 0 to the audio length.
2. **Lead correction** - the vocoder's audio leads its aligned frames by a roughly constant time, so every
   internal boundary moves earlier by ``lead_samples`` (first start and last end stay put).
3. **Clean-up** - stress marks join the phoneme after them, length/modifier marks the one before;
   a space's frames (the transition between words) are split between its neighbours; pads and
   punctuation become silence ``"_"``; adjacent silences merge.
4. **Trim** - leading/trailing silence beyond the configured maximum is cut from the audio (energy).
5. **Snap** - a word edge next to a pause moves in to where the audio actually goes quiet.
6. **Words** - each token's segments are grouped under the original word it came from.

The phoneme list always tiles the audio exactly (sum of durations == audio length).
"""

from __future__ import annotations

import bisect
import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from services.tts.backends.base import Timing

SILENCE = "_"
SILENT_SYMBOLS = frozenset('!"(),.:;?—“”…→↓↗↘«»')
STRESS_MARKS = frozenset("ˈˌ")
MODIFIERS = frozenset("ːʰʲ\u0303")
_WORD = re.compile(r"\S+")
_EDGE_PUNCT = "\"'“”‘’«»()[]{}.,;:!?…—–-*_`~"


@dataclass
class Segment:
    """A span of the clause audio in samples. ``kind``: phone, sil, space, mark_next or mark_prev."""

    label: str
    kind: str
    token: int
    start: int
    end: int


@dataclass(frozen=True)
class AlignOptions:
    """Knobs of :func:`align` (all in samples at the audio rate, except the dB values)."""

    lead_samples: int = 0
    max_lead_silence: int | None = None
    max_tail_silence: int | None = None
    snap_silence: bool = True
    window: int = 300
    quiet_below_peak_db: float = 40.0
    quiet_floor_db: float = -65.0


def symbol_kind(symbol: str) -> str:
    """How a model input symbol is treated: phone, sil, space, mark_next (stress) or mark_prev."""
    if symbol == " ":
        return "space"
    if symbol in STRESS_MARKS:
        return "mark_next"
    if symbol in MODIFIERS:
        return "mark_prev"
    if symbol == "" or symbol in SILENT_SYMBOLS:
        return "sil"
    return "phone"


def build_segments(symbols: list[str], tokens: list[int], durations: np.ndarray, frame_samples: int) -> list[Segment]:
    """Contiguous segments for model symbols (``""`` = pad) with frame counts ``durations``."""
    ends = np.cumsum(np.asarray(durations, np.int64) * frame_samples)
    starts = np.concatenate([[0], ends[:-1]])
    return [
        Segment(SILENCE if symbol_kind(s) == "sil" else s, symbol_kind(s), t, int(a), int(b))
        for s, t, a, b in zip(symbols, tokens, starts, ends, strict=True)
    ]


def shift_boundaries(segs: list[Segment], lead: int) -> None:
    """Move every internal boundary ``lead`` samples earlier (clamped, order kept)."""
    if not segs or lead <= 0:
        return
    total = segs[-1].end
    prev = 0
    for a, b in pairwise(segs):
        boundary = min(max(a.end - lead, prev), total)
        a.end = b.start = boundary
        prev = boundary


def _merge_marks(segs: list[Segment]) -> list[Segment]:
    out: list[Segment] = []
    carry: Segment | None = None  # stress marks waiting for their phoneme
    for seg in segs:
        if seg.kind == "mark_next":
            carry = carry or Segment(seg.label, "mark_next", seg.token, seg.start, seg.end)
            carry.end = seg.end
            continue
        if carry is not None:
            if seg.kind == "phone":
                seg.start = carry.start
            else:
                out.append(Segment(SILENCE, "sil", -1, carry.start, carry.end))
            carry = None
        if seg.kind == "mark_prev":
            if out and out[-1].kind == "phone":
                out[-1].label += seg.label
                out[-1].end = seg.end
            else:
                out.append(Segment(SILENCE, "sil", -1, seg.start, seg.end))
            continue
        out.append(seg)
    if carry is not None:
        out.append(Segment(SILENCE, "sil", -1, carry.start, carry.end))
    return out


def _split_spaces(segs: list[Segment]) -> list[Segment]:
    out: list[Segment] = []
    for i, seg in enumerate(segs):
        if seg.kind != "space":
            out.append(seg)
            continue
        nxt = next((s for s in segs[i + 1 :] if s.kind != "space"), None)
        prev = out[-1] if out else None
        if prev is None and nxt is None:
            out.append(Segment(SILENCE, "sil", -1, seg.start, seg.end))
        elif prev is None:
            nxt.start = seg.start
        elif nxt is None:
            prev.end = seg.end
        else:
            mid = (seg.start + seg.end) // 2
            prev.end = mid
            nxt.start = mid
    return out


def _merge_silences(segs: list[Segment]) -> list[Segment]:
    out: list[Segment] = []
    for seg in segs:
        if seg.end <= seg.start:
            continue
        if out and seg.kind == "sil" and out[-1].kind == "sil":
            out[-1].end = seg.end
        else:
            out.append(seg)
    return out


def _levels(audio: np.ndarray, opts: AlignOptions) -> tuple[np.ndarray, float]:
    """RMS per ``window`` samples and the level below which a window counts as quiet."""
    n = len(audio) // opts.window
    if n == 0:
        return np.zeros(0, np.float32), 0.0
    frames = audio[: n * opts.window].reshape(n, opts.window).astype(np.float64)
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    peak_db = 20 * np.log10(max(float(rms.max()), 1e-9))
    thr_db = max(peak_db - opts.quiet_below_peak_db, opts.quiet_floor_db)
    return rms, 10 ** (thr_db / 20)


def _is_quiet(audio: np.ndarray, start: int, end: int, threshold: float) -> bool:
    chunk = audio[max(start, 0) : max(end, 0)].astype(np.float64)
    return not len(chunk) or float(np.sqrt(np.mean(chunk * chunk))) < threshold


def trim_range(audio: np.ndarray, opts: AlignOptions) -> tuple[int, int]:
    """The ``[start, end)`` sample range to keep: at most the configured silence before/after speech."""
    rms, thr = _levels(audio, opts)
    loud = np.flatnonzero(rms >= thr) if len(rms) else np.zeros(0, np.int64)
    if not len(loud):
        return 0, len(audio)
    start, end = 0, len(audio)
    if opts.max_lead_silence is not None:
        start = max(0, int(loud[0]) * opts.window - opts.max_lead_silence)
    if opts.max_tail_silence is not None:
        end = min(len(audio), (int(loud[-1]) + 1) * opts.window + opts.max_tail_silence)
    return start, max(end, start)


def _crop(segs: list[Segment], start: int, end: int) -> list[Segment]:
    out = []
    for seg in segs:
        a, b = min(max(seg.start, start), end) - start, min(max(seg.end, start), end) - start
        if b > a:
            out.append(Segment(seg.label, seg.kind, seg.token, a, b))
    if out:
        out[0].start, out[-1].end = 0, end - start
    return out


def _snap(segs: list[Segment], audio: np.ndarray, word_of: list[int], opts: AlignOptions) -> None:
    """Pull word edges that border a silence segment in to where the audio is no longer quiet."""
    _, thr = _levels(audio, opts)
    win = opts.window
    for i, seg in enumerate(segs):
        if seg.kind != "phone":
            continue
        word = word_of[seg.token] if 0 <= seg.token < len(word_of) else -1
        prev = segs[i - 1] if i else None
        nxt = segs[i + 1] if i + 1 < len(segs) else None
        if prev is not None and prev.kind == "sil" and word >= 0:
            b = seg.start
            while b + 2 * win <= seg.end and _is_quiet(audio, b, b + win, thr):
                b += win
            seg.start = prev.end = b
        if nxt is not None and nxt.kind == "sil" and word >= 0:
            b = seg.end
            while b - 2 * win >= seg.start and _is_quiet(audio, b - win, b, thr):
                b -= win
            seg.end = nxt.start = b


def original_words(text: str) -> list[tuple[str, int, int]]:
    """``(label, start, end)`` for each whitespace-separated word of ``text`` with speakable content."""
    out = []
    for m in _WORD.finditer(text):
        label = m.group().strip(_EDGE_PUNCT)
        if any(c.isalnum() for c in label):
            out.append((label, m.start(), m.end()))
    return out


def _key(word: str) -> str:
    return "".join(c for c in word.lower() if c.isalnum())


def _word_map(orig: list[str], norm: list[str], normalize: Callable[[str], str] | None) -> list[int]:
    """Original-word index for each normalized word (word-level difflib on lower-case alphanumerics).

    Inside a replaced stretch ("7:30 pm" -> "seven thirty P.M.") the normalized words are shared out in
    proportion to how many words each original word normalizes to on its own ("7:30" -> 2, "pm" -> 1).
    """
    out = [0] * len(norm)
    matcher = difflib.SequenceMatcher(None, [_key(w) for w in norm], [_key(w) for w in orig], autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            out[i1:i2] = range(j1, j2)
        elif tag == "delete":  # words the normalizer added ("pounds"): the word before them
            out[i1:i2] = [max(j1 - 1, 0)] * (i2 - i1)
        elif tag == "replace":
            weights = [max(1, len(normalize(w).split())) if normalize else 1 for w in orig[j1:j2]]
            edges = np.cumsum(weights) / sum(weights)
            for k in range(i1, i2):
                at = (k - i1 + 0.5) / (i2 - i1)
                out[k] = j1 + min(int(np.searchsorted(edges, at, side="right")), j2 - j1 - 1)
    return out


def token_words(
    original: str, normalized: str, token_texts: list[str], normalize: Callable[[str], str] | None = None
) -> list[int]:
    """Index into :func:`original_words` of the word each G2P token was read from (-1: none).

    ``normalized`` is ``original`` after the TTS text normalizer and ``token_texts`` are the G2P
    tokens of ``normalized`` in order; ``normalize`` (the same normalizer) refines replaced stretches.
    """
    words = original_words(original)
    norm_words = original_words(normalized)
    if not words or not norm_words:
        return [-1] * len(token_texts)
    word_of_norm = _word_map([w[0] for w in words], [w[0] for w in norm_words], normalize)
    ends = [w[2] for w in norm_words]
    out, cursor = [], 0
    for text in token_texts:
        at = normalized.find(text, cursor) if text else -1
        if at < 0:
            at = cursor
        else:
            cursor = at + len(text)
        k = bisect.bisect_right(ends, at)
        if k < len(norm_words) and norm_words[k][1] <= at + max(len(text) - 1, 0) and _key(text):
            out.append(word_of_norm[k])
        else:
            out.append(-1)
    return out


def align(
    symbols: list[str],
    tokens: list[int],
    durations: np.ndarray,
    frame_samples: int,
    audio: np.ndarray,
    sample_rate: int,
    word_of_token: list[int],
    word_labels: list[str],
    opts: AlignOptions,
) -> tuple[np.ndarray, list[Timing], list[Timing]]:
    """Trimmed audio, word timings and phoneme timings (clause-relative microseconds).

    ``symbols``/``tokens``/``durations``: one entry per model input symbol (pad = ``""``, token -1).
    ``word_of_token``: word index per token (-1 = not a word), indexing ``word_labels``.
    """
    segs = build_segments(symbols, tokens, durations, frame_samples)
    if not segs:
        return audio, [], []
    segs[-1].end = len(audio)  # the vocoder output is exactly sum(durations) * frame_samples
    shift_boundaries(segs, opts.lead_samples)
    segs = _merge_silences(_split_spaces(_merge_marks(segs)))
    start, end = trim_range(audio, opts)
    audio = audio[start:end]
    segs = _merge_silences(_crop(segs, start, end))
    if opts.snap_silence:
        _snap(segs, audio, word_of_token, opts)
        segs = _merge_silences(segs)

    def us(samples: int) -> int:
        return round(samples * 1e6 / sample_rate)

    phonemes = [Timing(s.label if s.kind == "phone" else SILENCE, us(s.start), us(s.end)) for s in segs]
    spans: dict[int, list[int]] = {}
    for s in segs:
        word = word_of_token[s.token] if s.kind == "phone" and 0 <= s.token < len(word_of_token) else -1
        if word >= 0:
            span = spans.setdefault(word, [s.start, s.end])
            span[1] = s.end
    words = [Timing(word_labels[w], us(a), us(b)) for w, (a, b) in sorted(spans.items())]
    return audio, words, phonemes
