"""The ``parley.v1.Llm`` gRPC service: streaming chat completion with prompt cancellation.

Protocol of ``Generate`` (bidirectional stream):

1. The client sends one ``LlmRequest{chat}`` (else INVALID_ARGUMENT); its session must exist
   (else NOT_FOUND); messages and sampling are validated (INVALID_ARGUMENT with a message).
2. The server streams ``LlmEvent{token}`` pieces and ends with one ``LlmEvent{done}``.
3. Meanwhile a task reads the client's further messages: ``LlmRequest{cancel}`` stops the backend at
   once and the stream ends with ``done.finish_reason = "cancelled"``. Cancelling the call itself
   also stops the backend (nothing more is sent). Half-closing the request stream changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from parley import metrics as parley_metrics
from parley.bootstrap import ServiceApp
from parley.errors import InvalidInput
from parley.log import bind, unbind
from parley.v1 import llm_pb2, llm_pb2_grpc
from services.llm.backends import GenerationRequest, GenerationResult, LlmBackend, create_backend
from services.llm.config import LlmServiceConfig
from services.llm.metrics import CANCELLED, COMPLETION_TOKENS, TOKENS_PER_SECOND
from services.llm.validation import build_request

log = logging.getLogger("parley.llm")

SERVICE_NAME = "parley.v1.Llm"


def _tokens_per_s(count: int, first_at: float | None, last_at: float | None, start: float, end: float) -> float:
    """Decode speed: tokens after the first over the time since the first (whole span if too short)."""
    if count <= 0:
        return 0.0
    if count > 1 and first_at is not None and last_at is not None and last_at > first_at:
        return (count - 1) / (last_at - first_at)
    return count / max(end - start, 1e-6)


class _Generation:
    """State of one Generate call: the backend producer task, the request reader task, the outcome."""

    def __init__(self, backend: LlmBackend, request: GenerationRequest, requests: Any, start: float) -> None:
        self.backend = backend
        self.request = request
        self.requests = requests
        self.start = start
        self.result = GenerationResult()
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.pieces: list[str] = []
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.finished = False
        self.tasks: list[asyncio.Task[None]] = []

    async def _produce(self) -> None:
        try:
            async for text in self.backend.stream(self.request, self.result):
                self.queue.put_nowait(("token", text))
            self.queue.put_nowait(("end", None))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # surfaced by events() with its status code
            self.queue.put_nowait(("error", exc))

    async def _read(self) -> None:
        try:
            while True:
                message = await self.requests.__anext__()
                kind = message.WhichOneof("payload")
                if kind == "cancel":
                    self.queue.put_nowait(("cancel", message.cancel.reason))
                    return
                log.warning("ignoring a further %s message on a running generation", kind or "empty")
        except (StopAsyncIteration, asyncio.CancelledError):
            return
        except Exception:  # the call ended underneath us; on_rpc_done handles cancellation
            return

    def stop(self, reason: str | None = None) -> None:
        """Stop the backend and the reader; count a cancellation when the generation was unfinished."""
        if reason and not self.finished:
            CANCELLED.labels(parley_metrics.service_name(), reason).inc()
            log.info("generation cancelled", extra={"reason": reason, "tokens": len(self.pieces)})
        self.finished = True
        for task in self.tasks:
            task.cancel()

    def _done(self, finish_reason: str) -> llm_pb2.LlmEvent:
        end = time.perf_counter()
        count = len(self.pieces)
        if finish_reason != "cancelled" and self.result.completion_tokens:
            count = max(count, self.result.completion_tokens)
        rate = _tokens_per_s(len(self.pieces), self.first_at, self.last_at, self.start, end)
        ttft_ms = (self.first_at - self.start) * 1000.0 if self.first_at is not None else 0.0
        parley_metrics.observe("generation", end - self.start)
        if rate > 0:
            TOKENS_PER_SECOND.labels(parley_metrics.service_name()).observe(rate)
        log.info(
            "generation done",
            extra={
                "finish_reason": finish_reason,
                "ttft_ms": round(ttft_ms, 1),
                "tokens": count,
                "tokens_per_s": round(rate, 1),
                "prompt_tokens": self.result.prompt_tokens,
            },
        )
        return llm_pb2.LlmEvent(
            done=llm_pb2.GenerationDone(
                finish_reason=finish_reason,
                completion_tokens=count,
                prompt_tokens=self.result.prompt_tokens or 0,
                ttft_ms=ttft_ms,
                tokens_per_s=rate,
                model=self.result.model or self.backend.model_name,
                text="".join(self.pieces),
            )
        )

    async def events(self) -> AsyncIterator[llm_pb2.LlmEvent]:
        """Token events, then the done event."""
        self.tasks = [asyncio.create_task(self._produce()), asyncio.create_task(self._read())]
        try:
            while True:
                kind, value = await self.queue.get()
                if kind == "token":
                    now = time.perf_counter()
                    if self.first_at is None:
                        self.first_at = now
                        parley_metrics.observe("ttft", now - self.start)
                    self.last_at = now
                    self.pieces.append(value)
                    COMPLETION_TOKENS.labels(parley_metrics.service_name()).inc()
                    yield llm_pb2.LlmEvent(token=llm_pb2.TokenDelta(text=value, index=len(self.pieces) - 1))
                elif kind == "end":
                    self.finished = True
                    yield self._done(self.result.finish_reason or "stop")
                    return
                elif kind == "cancel":
                    self.stop("client")
                    yield self._done("cancelled")
                    return
                elif kind == "error":
                    self.finished = True
                    raise value
        finally:
            for task in self.tasks:
                task.cancel()


class LlmServicer(llm_pb2_grpc.LlmServicer):
    """Implements ``Generate`` on top of an :class:`LlmBackend`."""

    def __init__(self, app: ServiceApp, config: LlmServiceConfig, backend: LlmBackend) -> None:
        self.app = app
        self.config = config
        self.backend = backend

    async def Generate(  # noqa: N802 - gRPC method name
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[llm_pb2.LlmEvent]:
        holder: dict[str, _Generation] = {}

        def on_rpc_done(_: Any) -> None:
            generation = holder.get("generation")
            if generation is not None and not generation.finished:
                generation.stop("call")

        context.add_done_callback(on_rpc_done)
        requests = request_iterator.__aiter__()
        async for event in self.app.stream("Generate", context, lambda: self._generate(requests, holder)):
            yield event

    async def _first_chat(self, requests: Any) -> llm_pb2.ChatRequest:
        timeout = self.config.limits.first_message_timeout_s
        task = asyncio.ensure_future(requests.__anext__())
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        finally:
            task.cancel()
        if not done:
            raise InvalidInput(f"no ChatRequest received within {timeout:g} s")
        try:
            first = task.result()
        except StopAsyncIteration:
            raise InvalidInput("the request stream ended before a ChatRequest") from None
        if first.WhichOneof("payload") != "chat":
            raise InvalidInput(
                f"the first message must be a ChatRequest, got {first.WhichOneof('payload') or 'an empty message'}"
            )
        return first.chat

    async def _generate(self, requests: Any, holder: dict[str, _Generation]) -> AsyncIterator[llm_pb2.LlmEvent]:
        chat = await self._first_chat(requests)
        start = time.perf_counter()
        await self.app.check_session(chat.session.session_id)
        token = bind(session_id=chat.session.session_id, trace_id=chat.session.trace_id)
        try:
            request = build_request(chat, self.config)
            request.model = self.backend.check_model(chat.model)
            generation = holder["generation"] = _Generation(self.backend, request, requests, start)
            async for event in generation.events():
                yield event
        finally:
            with contextlib.suppress(ValueError):  # finalised in another context after a cancel
                unbind(token)


async def warm_up(backend: LlmBackend, persona: str) -> float:
    """Run a one-token chat with ``persona`` so llama.cpp caches its tokens; returns seconds taken."""
    start = time.perf_counter()
    request = GenerationRequest(
        messages=[{"role": "system", "content": persona}, {"role": "user", "content": "Hello"}],
        temperature=0.0,
        max_tokens=1,
    )
    async for _ in backend.stream(request):
        pass
    return time.perf_counter() - start


def build_app(config: LlmServiceConfig, backend: LlmBackend | None = None) -> ServiceApp:
    """The LLM service app. A ``backend`` passed in is started but not closed (the caller owns it)."""
    app = ServiceApp("llm", config.server)
    owned = backend is None
    backend = backend if backend is not None else create_backend(config)
    app.add_service(SERVICE_NAME, llm_pb2_grpc.add_LlmServicer_to_server, LlmServicer(app, config, backend))

    async def startup() -> None:
        await backend.start()
        if backend.name == "llamacpp" and config.llamacpp.warmup and config.persona_prompt:
            seconds = await warm_up(backend, config.persona_prompt)
            log.info("warmed up", extra={"seconds": round(seconds, 3)})
        log.info("llm backend ready", extra={"backend": backend.name, "model": backend.model_name})

    async def shutdown() -> None:
        if owned:
            await backend.close()

    app.on_startup(startup)
    app.on_shutdown(shutdown)
    app.backend = backend  # type: ignore[attr-defined] - handy for tests and embedding
    return app
