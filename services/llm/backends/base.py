"""The one interface every LLM backend implements, and the request/result types it speaks."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from parley.errors import BackendUnavailable, InvalidInput, NotFound


@dataclass
class GenerationRequest:
    """A validated chat completion request in OpenAI chat format (persona already applied)."""

    messages: list[dict[str, str]]
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 128
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    model: str = ""

    def openai_body(self) -> dict[str, Any]:
        """The JSON body of a streaming ``/chat/completions`` request."""
        body: dict[str, Any] = {
            "messages": self.messages,
            "stream": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        if self.stop:
            body["stop"] = list(self.stop)
        if self.model:
            body["model"] = self.model
        return body


@dataclass
class GenerationResult:
    """Filled in by a backend while it streams; complete once the stream has ended."""

    finish_reason: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str = ""


class LlmBackend(abc.ABC):
    """A streaming chat-completion backend.

    ``stream()`` is an async generator of token texts. It must stop the underlying generation
    promptly (within a token or two) when the consumer stops iterating: ``aclose()`` or cancellation
    of the task that iterates it. Errors are raised as :mod:`parley.errors` types
    (``InvalidInput``, ``BackendUnavailable`` ...).
    """

    name: str = "base"

    @property
    @abc.abstractmethod
    def model_name(self) -> str:
        """Name of the model served by default (reported in GenerationDone)."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load the model / open connections. Called once before the first ``stream()``."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop in-flight generations and release resources."""

    def check_model(self, model: str) -> str:
        """The model to use for a request naming ``model`` ("" = default); raise InvalidInput if unknown."""
        return model

    @abc.abstractmethod
    def stream(self, request: GenerationRequest, result: GenerationResult | None = None) -> AsyncIterator[str]:
        """Yield the completion's text pieces (one per token, roughly); fill ``result`` as it goes."""


def error_for_status(status: int, message: str, source: str) -> Exception:
    """Map an HTTP-style error status from a backend to the Parley error a caller should see."""
    text = f"{source} rejected the request ({status}): {message}" if message else f"{source} returned {status}"
    if status in (400, 413, 422):
        return InvalidInput(text)
    if status == 404:
        return NotFound(text)
    if status in (401, 403, 408, 429) or status >= 500:
        return BackendUnavailable(text)
    return RuntimeError(text)
