"""Any OpenAI-compatible ``POST {base_url}/audio/transcriptions`` endpoint (OpenAI, vLLM, faster-whisper
servers, speaches ...), asked for ``verbose_json`` with word timestamps."""

from __future__ import annotations

import io
import logging
import re
import time
import wave
from typing import Any

import httpx
import numpy as np

from parley.audio import float_to_pcm16
from parley.errors import BackendUnavailable, InvalidInput

from .base import SAMPLE_RATE, AsrBackend, Recognition, Word, clean_words

log = logging.getLogger("parley.asr.remote")

_LANGUAGE = re.compile(r"^[a-z]{2,3}$")


def wav_bytes(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Mono float samples as an in-memory 16-bit PCM WAV file."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(float_to_pcm16(samples))
    return buf.getvalue()


class RemoteBackend(AsrBackend):
    """Transcribes each utterance with one multipart HTTP request (thread-safe: one shared client)."""

    name = "remote"

    def __init__(
        self,
        base_url: str,
        api_key: str = "",
        model: str = "whisper-1",
        timeout_s: float = 30.0,
        max_concurrency: int = 4,
        temperature: float = 0.0,
    ) -> None:
        self.url = base_url.rstrip("/") + "/audio/transcriptions"
        self.model = model
        self.temperature = temperature
        self.concurrency = max_concurrency
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        )

    def warmup(self) -> None:
        """Nothing to warm locally; the endpoint is checked by the first real request."""

    def check_language(self, language: str) -> None:
        if language and not _LANGUAGE.match(language):
            raise InvalidInput(f"language must be an ISO 639-1/639-3 code such as 'en', got {language!r}")

    def transcribe(self, samples: np.ndarray, language: str, word_timestamps: bool) -> Recognition:
        start = time.perf_counter()
        duration = len(samples) / SAMPLE_RATE
        if not len(samples):
            return Recognition("", [], 0.0, language)
        data: dict[str, Any] = {
            "model": self.model,
            "response_format": "verbose_json",
            "temperature": str(self.temperature),
        }
        if language:
            data["language"] = language
        if word_timestamps:
            data["timestamp_granularities[]"] = ["word", "segment"]
        files = {"file": ("utterance.wav", wav_bytes(samples), "audio/wav")}
        try:
            response = self._client.post(self.url, data=data, files=files)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"ASR endpoint {self.url} unreachable: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise BackendUnavailable(
                f"ASR endpoint {self.url} answered HTTP {response.status_code}: {response.text[:300]}"
            )
        try:
            body = response.json()
            text = str(body.get("text", "")).strip()
            raw_words = body.get("words") or [w for seg in body.get("segments") or [] for w in (seg.get("words") or [])]
            words = [
                Word(str(w["word"]), float(w["start"]), float(w["end"]), float(w.get("probability", 0.0)))
                for w in raw_words
            ]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BackendUnavailable(f"ASR endpoint {self.url} returned an unreadable body: {exc}") from exc
        return Recognition(
            text=text,
            words=clean_words(words, duration) if word_timestamps else [],
            compute_s=time.perf_counter() - start,
            language=language or str(body.get("language", "")),
        )

    def close(self) -> None:
        self._client.close()
