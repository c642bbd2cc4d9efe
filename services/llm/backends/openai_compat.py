"""Any OpenAI-compatible ``/chat/completions`` endpoint, streamed over HTTP (SSE) with httpx.

Works with vLLM (``vllm serve <model>``), llama.cpp's ``llama-server``, TGI, Ollama and OpenAI.
Stopping: when the consumer stops iterating, the response is closed, which closes the connection;
vLLM and llama.cpp abort the request when the client disconnects.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

from parley.errors import BackendUnavailable
from services.llm.backends.base import GenerationRequest, GenerationResult, LlmBackend, error_for_status
from services.llm.config import OpenAIConfig

log = logging.getLogger("parley.llm.openai")

_MAX_ERROR_BYTES = 4096


def _error_message(raw: bytes) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the (truncated) body text."""
    text = raw[:_MAX_ERROR_BYTES].decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if data.get("message"):
            return str(data["message"])
    return text


class OpenAICompatBackend(LlmBackend):
    """Streams chat completions from ``{base_url}/chat/completions``."""

    name = "openai"

    def __init__(self, config: OpenAIConfig, client: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self._client = client
        self._own_client = client is None

    @property
    def model_name(self) -> str:
        return self.config.model or "openai-compatible"

    @property
    def url(self) -> str:
        """The chat completions URL."""
        return self.config.base_url.rstrip("/") + "/chat/completions"

    def _make_client(self) -> httpx.AsyncClient:
        cfg = self.config
        headers = {"Accept": "text/event-stream"}
        if cfg.api_key:
            headers["Authorization"] = f"Bearer {cfg.api_key}"
        return httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(cfg.timeout, connect=cfg.connect_timeout),
            limits=httpx.Limits(max_connections=cfg.max_connections, max_keepalive_connections=8),
            trust_env=False,
        )

    async def start(self) -> None:
        if self._client is None:
            self._client = self._make_client()
        log.info("openai-compatible backend", extra={"url": self.url, "model": self.config.model})

    async def close(self) -> None:
        if self._client is not None and self._own_client:
            await self._client.aclose()
        self._client = None

    def check_model(self, model: str) -> str:
        return model or self.config.model

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        body = {**self.config.extra_body, **request.openai_body()}
        if not request.model and self.config.model:
            body["model"] = self.config.model
        if self.config.include_usage:
            body["stream_options"] = {"include_usage": True}
        return body

    async def stream(self, request: GenerationRequest, result: GenerationResult | None = None) -> AsyncIterator[str]:
        result = result if result is not None else GenerationResult()
        result.model = request.model or self.model_name
        if self._client is None:
            await self.start()
        assert self._client is not None
        count = 0
        try:
            async with self._client.stream("POST", self.url, json=self._body(request)) as response:
                if response.status_code != 200:
                    raw = await response.aread()
                    raise error_for_status(response.status_code, _error_message(raw), self.url)
                async for line in response.aiter_lines():
                    line = line.strip()
                    if not line or line.startswith(":") or not line.startswith("data:"):
                        continue  # blank separators, SSE comments / keep-alives, event: / id: fields
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        log.warning("unparseable SSE data line", extra={"line": data[:200]})
                        continue
                    if not isinstance(chunk, dict):
                        continue
                    if "error" in chunk:
                        err = chunk["error"] if isinstance(chunk["error"], dict) else {"message": chunk["error"]}
                        raise error_for_status(int(err.get("code") or 500), str(err.get("message", "")), self.url)
                    if chunk.get("model") and not request.model:
                        result.model = str(chunk["model"])
                    usage = chunk.get("usage")
                    if usage:
                        result.prompt_tokens = usage.get("prompt_tokens", result.prompt_tokens)
                        result.completion_tokens = usage.get("completion_tokens", result.completion_tokens)
                    choices = chunk.get("choices") or []
                    if not choices:
                        continue
                    if choices[0].get("finish_reason"):
                        result.finish_reason = str(choices[0]["finish_reason"])
                    text = (choices[0].get("delta") or {}).get("content") or ""
                    if text:
                        count += 1
                        if result.completion_tokens is None or result.completion_tokens < count:
                            result.completion_tokens = count
                        yield text
        except httpx.TimeoutException as exc:
            raise BackendUnavailable(f"LLM endpoint {self.url} timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"cannot reach LLM endpoint {self.url}: {type(exc).__name__}: {exc}") from exc
