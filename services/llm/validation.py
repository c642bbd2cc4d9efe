"""Turn a ``ChatRequest`` into a validated :class:`GenerationRequest` (or raise InvalidInput)."""

from __future__ import annotations

import math

from parley.errors import InvalidInput
from parley.v1 import llm_pb2
from services.llm.backends.base import GenerationRequest
from services.llm.config import LlmServiceConfig

ROLES = ("system", "user", "assistant")
MAX_SEED = 2**32 - 1


def _check_range(name: str, value: float, low: float, high: float) -> float:
    if not math.isfinite(value) or value < low or value > high:
        raise InvalidInput(f"sampling.{name} must be between {low:g} and {high:g}, got {value:g}")
    return round(float(value), 4)  # float32 on the wire: 0.7 arrives as 0.699999988


def build_messages(chat: llm_pb2.ChatRequest, config: LlmServiceConfig) -> list[dict[str, str]]:
    """Validate the messages and put the persona (or the configured default) first as the system message.

    A system message at the start of ``messages`` is merged into the persona one, so templates that
    allow a single leading system message still work.
    """
    limits = config.limits
    if not chat.messages:
        raise InvalidInput("messages is empty: send at least one user message")
    if len(chat.messages) > limits.max_messages:
        raise InvalidInput(f"too many messages: {len(chat.messages)} > limit {limits.max_messages}")
    for i, message in enumerate(chat.messages):
        if message.role not in ROLES:
            raise InvalidInput(f"messages[{i}].role {message.role!r} is invalid: use one of {', '.join(ROLES)}")
        if not message.content.strip():
            raise InvalidInput(f"messages[{i}].content is empty")
    persona = chat.persona_prompt.strip() or config.persona_prompt.strip()
    total = len(persona) + sum(len(m.content) for m in chat.messages)
    if total > limits.max_prompt_chars:
        raise InvalidInput(
            f"prompt too long: {total} characters (persona + messages) > limit {limits.max_prompt_chars}"
        )
    messages = [{"role": m.role, "content": m.content} for m in chat.messages]
    if persona:
        if messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": f"{persona}\n\n{messages[0]['content']}"}
        else:
            messages.insert(0, {"role": "system", "content": persona})
    return messages


def build_request(chat: llm_pb2.ChatRequest, config: LlmServiceConfig) -> GenerationRequest:
    """A GenerationRequest for ``chat``: defaults for unset sampling fields, limits enforced."""
    messages = build_messages(chat, config)
    defaults, limits = config.sampling, config.limits
    sampling = chat.sampling
    temperature = _check_range("temperature", sampling.temperature, 0.0, 2.0)
    if sampling.greedy:
        temperature = 0.0
    elif temperature == 0.0:
        temperature = defaults.temperature
    top_p = _check_range("top_p", sampling.top_p, 0.0, 1.0) or defaults.top_p
    if sampling.max_tokens > limits.max_tokens:
        raise InvalidInput(f"sampling.max_tokens {sampling.max_tokens} > limit {limits.max_tokens}")
    max_tokens = sampling.max_tokens or min(defaults.max_tokens, limits.max_tokens)
    if sampling.seed > MAX_SEED:
        raise InvalidInput(f"sampling.seed must be below 2^32, got {sampling.seed}")
    if len(sampling.stop) > limits.max_stop:
        raise InvalidInput(f"too many stop strings: {len(sampling.stop)} > limit {limits.max_stop}")
    for i, stop in enumerate(sampling.stop):
        if not stop:
            raise InvalidInput(f"sampling.stop[{i}] is empty")
        if len(stop) > limits.max_stop_chars:
            raise InvalidInput(f"sampling.stop[{i}] is longer than {limits.max_stop_chars} characters")
    return GenerationRequest(
        messages=messages,
        temperature=temperature,
        top_p=1.0 if sampling.greedy else top_p,
        max_tokens=max_tokens,
        seed=sampling.seed or None,
        stop=list(sampling.stop),
        model=chat.model,
    )
