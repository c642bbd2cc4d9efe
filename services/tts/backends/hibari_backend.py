"""CPU default backend: hibari-tts (one bundled 24 kHz voice, ONNX) with real phoneme and word timings.

hibari's network predicts a duration (in frames of 2 vocoder hops = 600 samples = 25 ms) for every input
phoneme symbol, expands the phoneme features by those durations (Round -> Clip -> Cast -> CumSum ->
Range/GreaterOrEqual gather) and predicts the vocoder spectrum per 12.5 ms hop. The int64 tensor after the
Clip/Cast (``/Cast_32_output_0`` in hibari 0.2.x) is exactly those per-symbol durations, and
``2 * HOP * sum(durations)`` equals the audio length. We expose it as an extra graph output
(:mod:`.onnx_outputs`) and turn it into timings with :func:`services.tts.timings.align`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from parley.errors import InvalidInput
from services.tts.backends.base import Synthesis, TtsBackend
from services.tts.backends.onnx_outputs import add_output
from services.tts.config import HibariConfig
from services.tts.timings import AlignOptions, align, original_words, token_words

log = logging.getLogger("parley.tts.hibari")

MAX_SYMBOLS = 400
"""Longest phoneme string given to the model at once (hibari's own limit); longer clauses are split."""
_BREAKS = frozenset(" ,.;:!?—…")


@dataclass
class _Voice:
    name: str
    session: Any
    g2p: Any
    lock: threading.Lock


def _split_points(symbols: list[str], limit: int) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of at most ``limit`` symbols, cut after a space or punctuation if possible."""
    out, start = [], 0
    while len(symbols) - start > limit:
        cut = next((i + 1 for i in range(start + limit - 1, start, -1) if symbols[i] in _BREAKS), start + limit)
        out.append((start, cut))
        start = cut
    out.append((start, len(symbols)))
    return out


class HibariBackend(TtsBackend):
    """hibari-tts voices loaded at start-up; thread-safe (ONNX sessions are, G2P runs under a lock)."""

    name = "hibari"
    has_timings = True

    def __init__(self, config: HibariConfig) -> None:
        from hibari import dsp

        self.config = config
        self.sample_rate = dsp.SR
        self.frame_samples = 2 * dsp.HOP
        self.default_voice = config.voices[0] if config.voices else "heart"
        self._voices: dict[str, _Voice] = {}
        self._vocab: dict[str, int] = {}
        self._dsp = dsp
        from hibari.g2p.normalize import normalize

        self._normalize = normalize

    # -- set-up ---------------------------------------------------------------------------------
    def load(self) -> None:
        import onnxruntime as ort
        from hibari.g2p import G2P
        from hibari.tts import ASSETS
        from hibari.voices import VOICES, cache_dir, voice_path

        with open(os.path.join(ASSETS, "vocab.json"), encoding="utf-8") as f:
            self._vocab = json.load(f)
        g2ps: dict[bool, tuple[Any, threading.Lock]] = {}
        for name in self.config.voices:
            if name not in VOICES:
                raise ValueError(f"unknown hibari voice {name!r}; known: {', '.join(VOICES)}")
            try:
                path = self.config.model_path or voice_path(name, download_missing=False)
            except FileNotFoundError as exc:
                raise RuntimeError(
                    f"hibari voice {name!r} is not installed: only the bundled voice or files already in "
                    f"{cache_dir()} are used (nothing is downloaded)"
                ) from exc
            with open(path, "rb") as f:
                model = add_output(f.read(), self.config.duration_tensor)
            so = ort.SessionOptions()
            so.intra_op_num_threads = so.inter_op_num_threads = self.config.threads
            so.log_severity_level = 3
            try:
                session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
                raise RuntimeError(
                    f"{path}: cannot expose duration tensor {self.config.duration_tensor!r} as an output "
                    f"(different hibari model version? set tts.hibari.duration_tensor): {exc}"
                ) from exc
            british = bool(VOICES[name]["british"])
            if british not in g2ps:
                g2ps[british] = (G2P(british=british), threading.Lock())
            g2p, lock = g2ps[british]
            self._voices[name] = _Voice(name, session, g2p, lock)
        log.info("hibari loaded", extra={"voices": list(self._voices)})

    def check_voice(self, voice: str) -> str:
        name = voice or self.default_voice
        if name in self._voices:
            return name
        from hibari.voices import VOICES

        have = ", ".join(self._voices) or "none"
        if name not in VOICES:
            raise InvalidInput(f"unknown voice {name!r}; this server has: {have}")
        raise InvalidInput(f"voice {name!r} is not installed on this server (no downloads); available: {have}")

    # -- synthesis ------------------------------------------------------------------------------
    def phonemize(self, text: str, voice: str = "") -> tuple[str, list[Any]]:
        """Normalized text and hibari G2P tokens (each with ``text``, ``phonemes``, ``whitespace``)."""
        v = self._voices[self.check_voice(voice)]
        norm = self._normalize(text)
        with v.lock:
            tokens = v.g2p.phonemize_tokens(v.g2p.tokenize(norm)) if norm.strip() else []
        return norm, tokens

    def _symbols(self, tokens: list[Any]) -> tuple[list[str], list[int]]:
        """Model symbols and their token index (-1 for the spaces between tokens), like G2P.__call__."""
        symbols: list[str] = []
        owner: list[int] = []
        for i, tk in enumerate(tokens):
            for ch in tk.phonemes or "":
                if ch in self._vocab:
                    symbols.append(ch)
                    owner.append(i)
            if tk.whitespace:
                symbols.append(" ")
                owner.append(-1)
        while symbols and symbols[0] == " ":
            symbols.pop(0)
            owner.pop(0)
        while symbols and symbols[-1] == " ":
            symbols.pop()
            owner.pop()
        return symbols, owner

    def _run(self, session: Any, symbols: list[str], speed: float, rng: np.random.Generator) -> tuple[Any, Any]:
        ids = [0, *(self._vocab[c] for c in symbols), 0]
        out = session.run(None, {"ids": np.asarray([ids], np.int64), "speed": np.asarray([speed], np.float32)})
        lh, th, ln, lr, phi, f0 = (o[0] for o in out[:6])
        durations = np.asarray(out[6], np.int64).reshape(-1)
        audio = self._dsp.synth(lh, th, ln, lr, phi, f0, rng)
        expected = int(durations.sum()) * self.frame_samples
        if len(durations) != len(ids) or abs(len(audio) - expected) > self.frame_samples:
            raise RuntimeError(
                f"duration tensor does not match the audio ({len(durations)} durations for {len(ids)} ids, "
                f"{len(audio)} samples vs {expected})"
            )
        return audio.astype(np.float32, copy=False), durations

    def synthesize(self, text: str, speed: float = 1.0, voice: str = "") -> Synthesis:
        name = self.check_voice(voice)
        norm, tokens = self.phonemize(text, name)
        symbols, owner = self._symbols(tokens)
        if not any(c not in _BREAKS for c in symbols):
            return Synthesis(np.zeros(0, np.float32), self.sample_rate)
        rng = np.random.default_rng(self.config.seed)
        session = self._voices[name].session
        audios, durs, all_symbols, all_owner = [], [], [], []
        for a, b in _split_points(symbols, MAX_SYMBOLS):
            audio, durations = self._run(session, symbols[a:b], speed, rng)
            audios.append(audio)
            durs.append(durations)
            all_symbols += ["", *symbols[a:b], ""]
            all_owner += [-1, *owner[a:b], -1]
        audio = np.concatenate(audios)
        words = original_words(text)
        word_of_token = token_words(text, norm, [tk.text for tk in tokens], self._normalize)
        rate = self.sample_rate
        cfg = self.config
        opts = AlignOptions(
            lead_samples=round(cfg.lead_ms * rate / 1000 / speed),
            max_lead_silence=round(cfg.max_lead_silence_ms * rate / 1000),
            max_tail_silence=round(cfg.max_tail_silence_ms * rate / 1000),
            snap_silence=cfg.snap_silence,
            window=self._dsp.HOP,
        )
        audio, word_t, phone_t = align(
            all_symbols,
            all_owner,
            np.concatenate(durs),
            self.frame_samples,
            audio,
            rate,
            word_of_token,
            [w[0] for w in words],
            opts,
        )
        return Synthesis(audio, rate, word_t, phone_t)
