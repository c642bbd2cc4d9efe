"""Fixtures of the LLM service tests: one llama.cpp model per test session, a config on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from services.llm.backends.llamacpp import LlamaCppBackend
from services.llm.config import LlamaCppConfig, LlmServiceConfig

_backend: LlamaCppBackend | None = None


def shared_backend() -> LlamaCppBackend:
    """The SmolLM2 llama.cpp backend, loaded once per test process (2 slots, quiet)."""
    global _backend
    if _backend is None:
        backend = LlamaCppBackend(LlamaCppConfig(parallel=2, n_ctx=4096))
        backend.load()
        _backend = backend
    return _backend


@pytest.fixture(scope="session")
def llm_backend() -> LlamaCppBackend:
    """The shared, loaded llama.cpp backend (never closed by the apps that use it)."""
    return shared_backend()


@pytest.fixture
def llm_config(redis_url: str) -> LlmServiceConfig:
    """Service config on loopback: free gRPC and metrics ports, the test Redis, no warm-up."""
    return LlmServiceConfig(
        server={"host": "127.0.0.1", "port": 0, "metrics_port": 0, "redis_url": redis_url, "drain_seconds": 0.2},
        llamacpp={"warmup": False},
        limits={"first_message_timeout_s": 1},
    )


async def wait_until(predicate: Callable[[], Any], within: float = 5.0, interval: float = 0.02) -> float:
    """Poll ``predicate`` until true; returns the seconds waited (AssertionError after ``within`` s)."""
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > within:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(interval)
    return time.perf_counter() - start


class RequestQueue:
    """A client request stream that tests can push to while the call runs."""

    def __init__(self, *first: Any) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        for message in first:
            self._queue.put_nowait(message)

    def send(self, message: Any) -> None:
        self._queue.put_nowait(message)

    def close(self) -> None:
        self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[Any]:
        while (message := await self._queue.get()) is not None:
            yield message
