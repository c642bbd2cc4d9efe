"""The OpenAI-compatible backend against a real server: llama.cpp's own HTTP server (started by xllamacpp).

The llama.cpp backend's ``Server`` always runs llama.cpp's OpenAI-compatible HTTP server on loopback,
so these tests stream real SSE over real HTTP from the same SmolLM2 model.
"""

from __future__ import annotations

import contextlib

import pytest

from parley.errors import BackendUnavailable, InvalidInput
from parley.redis_server import free_port
from services.llm.backends.base import GenerationRequest, GenerationResult
from services.llm.backends.llamacpp import LlamaCppBackend
from services.llm.backends.openai_compat import OpenAICompatBackend
from services.llm.config import DEFAULT_PERSONA, OpenAIConfig
from tests.llm.conftest import wait_until

pytestmark = pytest.mark.models


@pytest.fixture
async def remote(llm_backend: LlamaCppBackend) -> OpenAICompatBackend:
    backend = OpenAICompatBackend(
        OpenAIConfig(base_url=f"{llm_backend.http_address}/v1", api_key=llm_backend.http_api_key, timeout=30)
    )
    await backend.start()
    yield backend
    await backend.close()


async def test_streams_over_http(remote: OpenAICompatBackend, llm_backend: LlamaCppBackend) -> None:
    request = GenerationRequest(
        messages=[
            {"role": "system", "content": DEFAULT_PERSONA},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        temperature=0.0,
        max_tokens=40,
    )
    result = GenerationResult()
    pieces = [text async for text in remote.stream(request, result)]
    answer = "".join(pieces)
    assert len(pieces) > 3  # streamed token by token, not one blob
    assert "paris" in answer.lower()
    assert result.finish_reason == "stop"
    assert result.prompt_tokens and result.prompt_tokens > 10  # from stream_options.include_usage
    assert result.completion_tokens and result.completion_tokens >= len(pieces)
    assert result.model == llm_backend.model_name  # the server's model alias


async def test_closing_the_stream_stops_the_server(remote: OpenAICompatBackend, llm_backend: LlamaCppBackend) -> None:
    before = llm_backend.tokens_predicted_total()
    request = GenerationRequest(
        messages=[{"role": "user", "content": "Write a very long story about a dragon who learns to sing."}],
        temperature=0.0,
        max_tokens=300,
    )
    received = 0
    stream = remote.stream(request)
    async with contextlib.aclosing(stream):
        async for _ in stream:
            received += 1
            if received == 5:
                break
    # llama.cpp notices the closed connection on its next write and releases the slot.
    await wait_until(lambda: llm_backend.tokens_predicted_total() > before, 10)
    decoded = llm_backend.tokens_predicted_total() - before
    print(f"\n[http close] received {received}, llama.cpp decoded {decoded:.0f}")
    assert decoded <= received + 10  # stopped within a few tokens, nowhere near the 300 asked for


async def test_unreachable_endpoint_is_unavailable() -> None:
    backend = OpenAICompatBackend(OpenAIConfig(base_url=f"http://127.0.0.1:{free_port('127.0.0.1')}/v1"))
    await backend.start()
    try:
        with pytest.raises(BackendUnavailable, match="cannot reach LLM endpoint"):
            async for _ in backend.stream(GenerationRequest(messages=[{"role": "user", "content": "Hi"}])):
                pass
    finally:
        await backend.close()


async def test_wrong_api_key_is_unavailable(llm_backend: LlamaCppBackend) -> None:
    backend = OpenAICompatBackend(OpenAIConfig(base_url=f"{llm_backend.http_address}/v1", api_key="wrong"))
    try:
        with pytest.raises(BackendUnavailable, match="401.*Invalid API Key"):
            async for _ in backend.stream(GenerationRequest(messages=[{"role": "user", "content": "Hi"}])):
                pass
    finally:
        await backend.close()


async def test_server_side_rejection_is_invalid_input(remote: OpenAICompatBackend) -> None:
    request = GenerationRequest(messages=[{"role": "user", "content": "word " * 2600}], max_tokens=8)
    with pytest.raises(InvalidInput, match="context"):
        async for _ in remote.stream(request):
            pass
