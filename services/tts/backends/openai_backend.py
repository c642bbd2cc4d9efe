"""Production alternative: any OpenAI-compatible ``POST {base_url}/audio/speech`` endpoint.

Works with OpenAI, Kokoro-FastAPI, openedai-speech, vLLM-served TTS models and the like. Such endpoints
return audio only, so words and phonemes stay empty (the renderer falls back to audio-driven lip sync).
``response_format: pcm`` is raw signed 16-bit little-endian mono at ``pcm_sample_rate`` (24 kHz for
OpenAI); ``wav`` is parsed from its header.
"""

from __future__ import annotations

import io
import threading
import wave

import httpx
import numpy as np

from parley.audio import pcm16_to_float
from parley.errors import BackendUnavailable, InvalidInput
from services.tts.backends.base import Synthesis, TtsBackend
from services.tts.config import OpenAIConfig


def _decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise BackendUnavailable(f"TTS endpoint returned an unreadable WAV ({exc})") from exc
    if width != 2:
        raise BackendUnavailable(f"TTS endpoint returned {8 * width}-bit WAV; 16-bit PCM expected")
    samples = pcm16_to_float(raw[: len(raw) - len(raw) % (2 * channels)])
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return samples.astype(np.float32), rate


class OpenAIBackend(TtsBackend):
    """Clause text -> one HTTP request (synchronous httpx client, run on the service's worker threads)."""

    name = "openai"
    has_timings = False

    def __init__(self, config: OpenAIConfig) -> None:
        self.config = config
        self.default_voice = config.voice
        self.sample_rate = config.pcm_sample_rate
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
                self._client = httpx.Client(
                    base_url=self.config.base_url.rstrip("/") + "/", headers=headers, timeout=self.config.timeout_s
                )
            return self._client

    def load(self) -> None:
        self._http()

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def check_voice(self, voice: str) -> str:
        name = voice or self.default_voice
        if not name:
            raise InvalidInput("no voice given and the openai backend has no default voice configured")
        if self.config.voices and name not in self.config.voices:
            raise InvalidInput(f"unknown voice {name!r}; available: {', '.join(self.config.voices)}")
        return name

    def synthesize(self, text: str, speed: float = 1.0, voice: str = "") -> Synthesis:
        body: dict[str, object] = {
            "model": self.config.model,
            "input": text,
            "voice": self.check_voice(voice),
            "response_format": self.config.response_format,
        }
        if self.config.send_speed:
            body["speed"] = speed
        try:
            resp = self._http().post("audio/speech", json=body)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"TTS endpoint {self.config.base_url} unreachable: {exc}") from exc
        if resp.status_code >= 400:
            detail = resp.text[:300]
            if 400 <= resp.status_code < 500 and resp.status_code not in (401, 403, 404, 408, 429):
                raise InvalidInput(f"TTS endpoint rejected the request ({resp.status_code}): {detail}")
            raise BackendUnavailable(f"TTS endpoint failed ({resp.status_code}): {detail}")
        data = resp.content
        if self.config.response_format == "wav" or data[:4] == b"RIFF":
            audio, rate = _decode_wav(data)
        else:
            audio, rate = pcm16_to_float(data[: len(data) - len(data) % 2]), self.config.pcm_sample_rate
        return Synthesis(audio, rate)
