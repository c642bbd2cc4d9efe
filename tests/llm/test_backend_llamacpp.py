"""The llama.cpp backend on the real SmolLM2-135M model: answers, stops on cancel, rejects bad input."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from parley.errors import InvalidInput
from services.llm.backends.base import GenerationRequest, GenerationResult
from services.llm.backends.llamacpp import LlamaCppBackend
from services.llm.config import DEFAULT_PERSONA
from tests.llm.conftest import wait_until

pytestmark = pytest.mark.models

STORY = [{"role": "user", "content": "Write a very long story about a dragon who learns to sing."}]


def _france() -> GenerationRequest:
    return GenerationRequest(
        messages=[
            {"role": "system", "content": DEFAULT_PERSONA},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        temperature=0.0,
        max_tokens=40,
    )


async def test_capital_of_france(llm_backend: LlamaCppBackend) -> None:
    result = GenerationResult()
    start = time.perf_counter()
    first = None
    pieces = []
    async for text in llm_backend.stream(_france(), result):
        first = first or time.perf_counter() - start
        pieces.append(text)
    answer = "".join(pieces)
    print(f"\nload {llm_backend.load_seconds:.2f} s, ttft {first * 1000:.0f} ms, answer {answer!r}, {result}")
    assert "paris" in answer.lower()
    assert result.finish_reason == "stop"
    assert result.prompt_tokens and result.prompt_tokens > 10
    assert result.completion_tokens in (len(pieces), len(pieces) + 1)  # usage counts the end token
    assert result.model == llm_backend.model_name


async def _stop_after(llm_backend: LlamaCppBackend, n: int, how: str) -> None:
    """Consume ``n`` tokens of a long generation, then stop it with ``how`` ("aclose" / "cancel")."""
    before = llm_backend.tokens_predicted_total()
    llm_backend.last_cancel = None
    got = asyncio.Event()
    received = 0

    async def consume() -> None:
        nonlocal received
        stream = llm_backend.stream(GenerationRequest(messages=STORY, temperature=0.0, max_tokens=300))
        async with contextlib.aclosing(stream):
            async for _ in stream:
                received += 1
                if received == n:
                    if how == "aclose":
                        break
                    got.set()  # keep consuming: the cancel lands while awaiting the next token

    task = asyncio.create_task(consume())
    if how == "cancel":
        await asyncio.wait_for(got.wait(), 30)
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await wait_until(lambda: llm_backend.active == 0 and llm_backend.last_cancel is not None, 5)
    report = llm_backend.last_cancel
    assert report is not None
    # llama.cpp updates its token counter when the slot is released, just after the handler returns.
    await wait_until(lambda: llm_backend.tokens_predicted_total() > before, 5)
    decoded = llm_backend.tokens_predicted_total() - before
    after = decoded - report.chunks_before_stop
    print(
        f"\n[{how}] received {received}, produced before stop {report.chunks_before_stop}, "
        f"decoded {decoded:.0f} => {after:.0f} after stop; stop latency {report.stop_latency_s * 1000:.1f} ms"
    )
    assert n <= received <= n + 1
    assert after <= 2
    assert report.stop_latency_s < 0.5
    assert decoded < 100  # nowhere near the 300 asked for


async def test_aclose_stops_generation(llm_backend: LlamaCppBackend) -> None:
    await _stop_after(llm_backend, 5, "aclose")


async def test_task_cancel_stops_generation(llm_backend: LlamaCppBackend) -> None:
    await _stop_after(llm_backend, 4, "cancel")


async def test_two_generations_run_in_parallel_slots(llm_backend: LlamaCppBackend) -> None:
    async def one(question: str) -> str:
        request = GenerationRequest(messages=[{"role": "user", "content": question}], temperature=0.0, max_tokens=24)
        return "".join([t async for t in llm_backend.stream(request)])

    answers = await asyncio.gather(one("Name a color."), one("Name an animal."))
    assert all(answers)


async def test_prompt_over_context_is_invalid_input(llm_backend: LlamaCppBackend) -> None:
    request = GenerationRequest(messages=[{"role": "user", "content": "word " * 2600}], max_tokens=8)
    with pytest.raises(InvalidInput, match="context"):
        async for _ in llm_backend.stream(request):
            pass
    await wait_until(lambda: llm_backend.active == 0, 2)


def test_unknown_model_name_is_invalid(llm_backend: LlamaCppBackend) -> None:
    assert llm_backend.check_model("") == ""
    assert llm_backend.check_model(llm_backend.model_name) == ""
    with pytest.raises(InvalidInput, match="not served"):
        llm_backend.check_model("gpt-17")
