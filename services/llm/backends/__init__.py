"""LLM backends behind one interface (:class:`~services.llm.backends.base.LlmBackend`)."""

from __future__ import annotations

from services.llm.backends.base import GenerationRequest, GenerationResult, LlmBackend
from services.llm.config import LlmServiceConfig


def create_backend(config: LlmServiceConfig) -> LlmBackend:
    """The backend named by ``config.backend`` (not started yet)."""
    if config.backend == "llamacpp":
        from services.llm.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(config.llamacpp)
    if config.backend == "openai":
        from services.llm.backends.openai_compat import OpenAICompatBackend

        return OpenAICompatBackend(config.openai)
    raise ValueError(f"unknown LLM backend {config.backend!r}")


__all__ = ["GenerationRequest", "GenerationResult", "LlmBackend", "create_backend"]
