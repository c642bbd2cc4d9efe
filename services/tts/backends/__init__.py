"""Synthesis backends: ``hibari`` (CPU default, real timings) and ``openai`` (any compatible endpoint)."""

from __future__ import annotations

from services.tts.backends.base import Synthesis, Timing, TtsBackend
from services.tts.config import TtsServiceConfig

__all__ = ["Synthesis", "Timing", "TtsBackend", "make_backend"]


def make_backend(config: TtsServiceConfig) -> TtsBackend:
    """The backend named by ``config.backend`` (not loaded yet: call ``load()`` on a worker thread)."""
    if config.backend == "hibari":
        from services.tts.backends.hibari_backend import HibariBackend

        backend: TtsBackend = HibariBackend(config.hibari)
    elif config.backend == "openai":
        from services.tts.backends.openai_backend import OpenAIBackend

        backend = OpenAIBackend(config.openai)
    else:  # pragma: no cover - the config's Literal prevents this
        raise ValueError(f"unknown tts backend {config.backend!r}")
    if config.voice:
        backend.default_voice = config.voice
    return backend
