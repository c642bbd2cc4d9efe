"""The Llm gRPC service over loopback with the real model and a real Redis session store."""

from __future__ import annotations

import asyncio
import re
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parley.redis_server import free_port
from parley.v1 import common_pb2, llm_pb2, llm_pb2_grpc
from services.llm.backends.llamacpp import LlamaCppBackend
from services.llm.config import LlmServiceConfig
from services.llm.server import build_app
from tests.llm.conftest import RequestQueue, wait_until

pytestmark = pytest.mark.models

STORY = "Write a very long story about a dragon who learns to sing."


def chat(session_id: str, text: str, **sampling: object) -> llm_pb2.LlmRequest:
    return llm_pb2.LlmRequest(
        chat=llm_pb2.ChatRequest(
            session=common_pb2.SessionRef(session_id=session_id, trace_id="t-1"),
            messages=[llm_pb2.ChatMessage(role="user", content=text)],
            sampling=llm_pb2.Sampling(**sampling),
        )
    )


def cancel(reason: str = "barge-in") -> llm_pb2.LlmRequest:
    return llm_pb2.LlmRequest(cancel=llm_pb2.CancelGeneration(reason=reason))


async def scrape(port: int) -> str:
    async with httpx.AsyncClient(trust_env=False) as client:
        return (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


@pytest.fixture
async def served(llm_config: LlmServiceConfig, llm_backend: LlamaCppBackend):
    app = build_app(llm_config, backend=llm_backend)
    async with app.running() as address, grpc.aio.insecure_channel(address) as channel:
        yield app, llm_pb2_grpc.LlmStub(channel), channel


async def test_chat_streams_tokens_then_done(served, session_id: str) -> None:
    app, stub, channel = served
    start = time.perf_counter()
    request = chat(session_id, "What is the capital of France?", greedy=True)
    events = [e async for e in stub.Generate(RequestQueue(request))]
    tokens = [e.token for e in events if e.HasField("token")]
    assert len(tokens) > 3 and all(e.HasField("token") for e in events[:-1])
    assert [t.index for t in tokens] == list(range(len(tokens)))
    done = events[-1].done
    assert events[-1].HasField("done")
    print(
        f"\n[grpc] ttft {done.ttft_ms:.0f} ms, {done.tokens_per_s:.1f} tok/s, prompt {done.prompt_tokens}, "
        f"completion {done.completion_tokens}, wall {time.perf_counter() - start:.2f} s: {done.text!r}"
    )
    assert done.finish_reason == "stop"
    assert done.text == "".join(t.text for t in tokens)
    assert "paris" in done.text.lower()
    assert done.ttft_ms > 0 and done.tokens_per_s > 0
    assert done.prompt_tokens > 10 and done.completion_tokens >= len(tokens)
    assert done.model == app.backend.model_name

    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="parley.v1.Llm"))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    text = await scrape(app.metrics_port)
    assert metric_value(text, "parley_stage_latency_seconds_count", service="llm", stage="ttft") >= 1
    assert metric_value(text, "parley_stage_latency_seconds_count", service="llm", stage="generation") >= 1
    assert metric_value(text, "parley_llm_tokens_per_second_count", service="llm") >= 1


async def test_max_tokens_gives_length(served, session_id: str) -> None:
    _, stub, _ = served
    events = [e async for e in stub.Generate(RequestQueue(chat(session_id, STORY, greedy=True, max_tokens=6)))]
    done = events[-1].done
    assert done.finish_reason == "length"
    assert done.completion_tokens == 6


async def test_cancel_message_ends_with_cancelled(served, session_id: str) -> None:
    app, stub, _ = served
    backend: LlamaCppBackend = app.backend
    metrics_before = await scrape(app.metrics_port)
    requests = RequestQueue(chat(session_id, STORY, max_tokens=300, greedy=True))
    call = stub.Generate(requests)
    tokens = 0
    done = None
    sent_at = 0.0
    async for event in call:
        if event.HasField("token"):
            tokens += 1
            if tokens == 5:
                sent_at = time.perf_counter()
                requests.send(cancel())
        else:
            done = event.done
    done_after = time.perf_counter() - sent_at
    assert done is not None and done.finish_reason == "cancelled"
    assert tokens <= 7 and done.completion_tokens == tokens
    assert await call.code() == grpc.StatusCode.OK
    await wait_until(lambda: backend.active == 0, 5)
    print(f"\n[grpc cancel msg] cancel -> done {done_after * 1000:.1f} ms, tokens {tokens}, {backend.last_cancel}")
    assert done_after < 0.5
    text = await scrape(app.metrics_port)
    before = metric_value(metrics_before, "parley_llm_cancelled_total", service="llm", reason="client")
    assert metric_value(text, "parley_llm_cancelled_total", service="llm", reason="client") == before + 1


async def test_client_cancelling_the_call_stops_generation(served, session_id: str) -> None:
    app, stub, _ = served
    backend: LlamaCppBackend = app.backend
    before = metric_value(await scrape(app.metrics_port), "parley_llm_cancelled_total", service="llm", reason="call")
    predicted = backend.tokens_predicted_total()
    backend.last_cancel = None
    call = stub.Generate(RequestQueue(chat(session_id, STORY, max_tokens=300, greedy=True)))
    tokens = 0
    async for event in call:
        tokens += event.HasField("token")
        if tokens == 5:
            call.cancel()
            break
    waited = await wait_until(lambda: backend.active == 0 and backend.last_cancel is not None, 5)
    await wait_until(lambda: backend.tokens_predicted_total() > predicted, 5)
    decoded = backend.tokens_predicted_total() - predicted
    print(f"\n[call cancel] idle after {waited * 1000:.0f} ms, decoded {decoded:.0f}, {backend.last_cancel}")
    assert decoded <= backend.last_cancel.chunks_before_stop + 2
    assert decoded < 20
    text = await wait_for_metric(app.metrics_port, "parley_llm_cancelled_total", before + 1, reason="call")
    assert metric_value(text, "parley_streams_total", service="llm", method="Generate", code="CANCELLED") >= 1


async def wait_for_metric(port: int, name: str, value: float, **labels: str) -> str:
    deadline = time.perf_counter() + 5
    while True:
        text = await scrape(port)
        if metric_value(text, name, service="llm", **labels) >= value:
            return text
        assert time.perf_counter() < deadline, f"{name}{labels} never reached {value}"
        await asyncio.sleep(0.05)


async def _expect_error(stub: llm_pb2_grpc.LlmStub, *messages: llm_pb2.LlmRequest) -> grpc.aio.AioRpcError:
    return await _expect_error_from(stub, RequestQueue(*messages))


async def _expect_error_from(stub: llm_pb2_grpc.LlmStub, requests: RequestQueue) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.Generate(requests):
            pass
    return info.value


async def test_bad_input_is_rejected_while_a_good_stream_completes(served, session_id: str) -> None:
    _, stub, _ = served
    good = asyncio.create_task(_collect(stub, chat(session_id, "Tell me about cats.", max_tokens=40, greedy=True)))

    def with_messages(*messages: tuple[str, str], **sampling: object) -> llm_pb2.LlmRequest:
        request = chat(session_id, "x", **sampling)
        del request.chat.messages[:]
        request.chat.messages.extend(llm_pb2.ChatMessage(role=r, content=c) for r, c in messages)
        return request

    cases = [
        ([cancel()], grpc.StatusCode.INVALID_ARGUMENT, "first message must be a ChatRequest"),
        ([chat("no-such-session", "Hi")], grpc.StatusCode.NOT_FOUND, "unknown session_id"),
        ([chat("bad id!", "Hi")], grpc.StatusCode.INVALID_ARGUMENT, "session_id"),
        ([with_messages(("wizard", "Hi"))], grpc.StatusCode.INVALID_ARGUMENT, "role 'wizard' is invalid"),
        ([with_messages()], grpc.StatusCode.INVALID_ARGUMENT, "messages is empty"),
        ([with_messages(("user", "   "))], grpc.StatusCode.INVALID_ARGUMENT, r"messages\[0\].content is empty"),
        ([chat(session_id, "word " * 3000)], grpc.StatusCode.INVALID_ARGUMENT, "prompt too long"),
        ([chat(session_id, "Hi", temperature=5)], grpc.StatusCode.INVALID_ARGUMENT, "temperature must be between 0"),
        ([chat(session_id, "Hi", top_p=1.5)], grpc.StatusCode.INVALID_ARGUMENT, "top_p"),
        ([chat(session_id, "Hi", max_tokens=100_000)], grpc.StatusCode.INVALID_ARGUMENT, "max_tokens 100000 > limit"),
    ]
    for messages, code, message in cases:
        error = await _expect_error(stub, *messages)
        assert error.code() == code, (message, error)
        assert re.search(message, error.details()), error.details()
    unknown_model = chat(session_id, "Hi")
    unknown_model.chat.model = "gpt-17"
    error = await _expect_error(stub, unknown_model)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "not served" in error.details()

    events = await asyncio.wait_for(good, 60)
    assert events[-1].done.finish_reason in ("stop", "length") and events[-1].done.text


async def test_empty_or_silent_request_stream_is_invalid(served) -> None:
    _, stub, _ = served
    requests = RequestQueue()
    requests.close()
    error = await _expect_error_from(stub, requests)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "ended before a ChatRequest" in error.details()
    error = await _expect_error_from(stub, RequestQueue())  # open, but nothing sent
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no ChatRequest received within 1 s" in error.details()


async def test_three_sessions_at_once(served, store) -> None:
    _, stub, _ = served
    sessions = [await store.create(persona="test") for _ in range(3)]
    questions = ["Name a fruit.", "Name a country.", "Name a planet."]
    results = await asyncio.gather(
        *(_collect(stub, chat(s, q, max_tokens=16, greedy=True)) for s, q in zip(sessions, questions, strict=True))
    )
    assert all(r[-1].done.completion_tokens > 0 for r in results)


async def _collect(stub: llm_pb2_grpc.LlmStub, request: llm_pb2.LlmRequest) -> list[llm_pb2.LlmEvent]:
    return [event async for event in stub.Generate(RequestQueue(request))]


async def test_unreachable_openai_endpoint_is_unavailable(redis_url: str, session_id: str) -> None:
    config = LlmServiceConfig(
        server={"port": 0, "metrics_port": 0, "redis_url": redis_url, "drain_seconds": 0.2},
        backend="openai",
        openai={"base_url": f"http://127.0.0.1:{free_port()}/v1", "connect_timeout": 2},
    )
    async with build_app(config).running() as address, grpc.aio.insecure_channel(address) as channel:
        error = await _expect_error(llm_pb2_grpc.LlmStub(channel), chat(session_id, "Hi"))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "cannot reach LLM endpoint" in error.details()


async def test_cancel_before_the_first_token(served, session_id: str) -> None:
    app, stub, _ = served
    backend: LlamaCppBackend = app.backend
    events = [e async for e in stub.Generate(RequestQueue(chat(session_id, STORY, max_tokens=300), cancel()))]
    assert events[-1].HasField("done") and events[-1].done.finish_reason == "cancelled"
    assert len(events) <= 3
    await wait_until(lambda: backend.active == 0, 5)  # stops at its first token


async def test_half_closing_the_request_stream_does_not_cancel(served, session_id: str) -> None:
    _, stub, _ = served
    requests = RequestQueue(chat(session_id, "Name a color.", max_tokens=12, greedy=True))
    requests.close()
    events = [e async for e in stub.Generate(requests)]
    assert events[-1].done.finish_reason in ("stop", "length") and events[-1].done.completion_tokens > 0
