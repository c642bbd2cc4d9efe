"""Config loading and request validation (no model needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley.config import load_config
from parley.errors import InvalidInput
from parley.v1 import llm_pb2
from services.llm.backends import create_backend
from services.llm.backends.openai_compat import OpenAICompatBackend, _error_message
from services.llm.config import DEFAULT_PERSONA, LlmServiceConfig
from services.llm.validation import build_request


def _chat(*messages: tuple[str, str], persona: str = "", **sampling: object) -> llm_pb2.ChatRequest:
    return llm_pb2.ChatRequest(
        persona_prompt=persona,
        messages=[llm_pb2.ChatMessage(role=r, content=c) for r, c in messages or [("user", "Hi")]],
        sampling=llm_pb2.Sampling(**sampling),
    )


def test_defaults() -> None:
    config = LlmServiceConfig()
    assert config.server.port == 50053
    assert config.backend == "llamacpp"
    assert Path(config.llamacpp.model_path).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert Path(config.llamacpp.model_path).is_file()
    assert len(config.persona_prompt) < 200  # prompt tokens cost TTFT on CPU


def test_env_and_yaml(tmp_path: Path) -> None:
    yaml_file = tmp_path / "parley.yaml"
    yaml_file.write_text(
        "common:\n  server: {redis_url: 'redis://r:6379/0'}\n"
        "llm:\n  backend: openai\n  openai:\n    base_url: http://vllm:8000/v1\n    model: Qwen/Qwen2.5-1.5B-Instruct\n"
        "    extra_body: {chat_template_kwargs: {enable_thinking: false}}\n"
    )
    environ = {"PARLEY_LLM__OPENAI__TIMEOUT": "12", "PARLEY_LLM__SAMPLING__TEMPERATURE": "0.4"}
    config = load_config(LlmServiceConfig, "llm", yaml_file, environ=environ)
    assert config.server.redis_url == "redis://r:6379/0"
    assert config.server.port == 50053  # a partial server section keeps the service's default port
    assert config.backend == "openai" and config.openai.model == "Qwen/Qwen2.5-1.5B-Instruct"
    assert config.openai.timeout == 12 and config.sampling.temperature == 0.4
    backend = create_backend(config)
    assert isinstance(backend, OpenAICompatBackend)
    assert backend.url == "http://vllm:8000/v1/chat/completions"
    body = backend._body(build_request(_chat(), config))
    assert body["model"] == "Qwen/Qwen2.5-1.5B-Instruct" and body["stream"] is True
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["stream_options"] == {"include_usage": True}


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError):
        load_config(LlmServiceConfig, "llm", environ={"PARLEY_LLM__BACKEND": "vllm"})
    with pytest.raises(ValueError):
        load_config(LlmServiceConfig, "llm", environ={"PARLEY_LLM__LLAMACPP__N_CTX": "16"})


def test_sampling_defaults_and_greedy() -> None:
    config = LlmServiceConfig()
    request = build_request(_chat(), config)
    assert (request.temperature, request.top_p, request.max_tokens, request.seed) == (0.7, 0.95, 128, None)
    request = build_request(_chat(temperature=0.3, top_p=0.5, max_tokens=64, seed=7, stop=["\n"]), config)
    assert (request.temperature, request.top_p, request.max_tokens, request.seed) == (0.3, 0.5, 64, 7)
    assert request.stop == ["\n"]
    request = build_request(_chat(temperature=1.2, greedy=True), config)
    assert request.temperature == 0.0 and request.top_p == 1.0


def test_persona_becomes_the_system_message() -> None:
    config = LlmServiceConfig()
    assert build_request(_chat(), config).messages[0] == {"role": "system", "content": DEFAULT_PERSONA}
    messages = build_request(_chat(("user", "Hi"), persona="You are Ada."), config).messages
    assert messages == [{"role": "system", "content": "You are Ada."}, {"role": "user", "content": "Hi"}]
    messages = build_request(_chat(("system", "Be brief."), ("user", "Hi"), persona="You are Ada."), config).messages
    assert messages[0] == {"role": "system", "content": "You are Ada.\n\nBe brief."} and len(messages) == 2


@pytest.mark.parametrize(
    ("chat", "message"),
    [
        (llm_pb2.ChatRequest(), "messages is empty"),
        (_chat(("tool", "x")), "role 'tool' is invalid"),
        (_chat(("user", "")), r"messages\[0\].content is empty"),
        (_chat(*[("user", "hi")] * 65), "too many messages: 65 > limit 64"),
        (_chat(("user", "x" * 8001)), "prompt too long: .* > limit 8000"),
        (_chat(persona="p" * 7990, **{}), None),
        (_chat(temperature=2.5), "temperature must be between 0 and 2, got 2.5"),
        (_chat(temperature=float("nan")), "temperature"),
        (_chat(temperature=-1), "temperature"),
        (_chat(top_p=-0.1), "top_p must be between 0 and 1"),
        (_chat(max_tokens=513), "max_tokens 513 > limit 512"),
        (_chat(seed=2**40), "seed must be below 2"),
        (_chat(stop=["a", "b", "c", "d", "e"]), "too many stop strings"),
        (_chat(stop=[""]), r"stop\[0\] is empty"),
        (_chat(stop=["x" * 65]), "longer than 64"),
    ],
)
def test_invalid_requests(chat: llm_pb2.ChatRequest, message: str | None) -> None:
    if message is None:
        build_request(chat, LlmServiceConfig())
        return
    with pytest.raises(InvalidInput, match=message):
        build_request(chat, LlmServiceConfig())


def test_error_bodies_are_summarised() -> None:
    assert _error_message(b'{"error": {"message": "context too long", "code": 400}}') == "context too long"
    assert _error_message(b'{"object": "error", "message": "model not found"}') == "model not found"
    assert _error_message(b"<html>bad gateway</html>") == "<html>bad gateway</html>"
