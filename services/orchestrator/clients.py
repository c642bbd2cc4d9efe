"""gRPC channels and stubs for the stage services, and a queue-fed request stream helper."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from parley.v1 import asr_pb2_grpc, llm_pb2_grpc, tts_pb2_grpc, turn_pb2_grpc
from services.orchestrator.config import StageEndpoints

_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


class StageClients:
    """One channel per stage service, shared by every conversation in a process."""

    def __init__(self, endpoints: StageEndpoints) -> None:
        self.endpoints = endpoints
        self._channels = {
            name: grpc.aio.insecure_channel(getattr(endpoints, name), options=_CHANNEL_OPTIONS)
            for name in ("turn", "asr", "llm", "tts")
        }
        self.turn = turn_pb2_grpc.TurnTakingStub(self._channels["turn"])
        self.asr = asr_pb2_grpc.AsrStub(self._channels["asr"])
        self.llm = llm_pb2_grpc.LlmStub(self._channels["llm"])
        self.tts = tts_pb2_grpc.TtsStub(self._channels["tts"])

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Wait until every channel is connected."""
        await asyncio.wait_for(
            asyncio.gather(*(ch.channel_ready() for ch in self._channels.values())), timeout_s
        )

    async def close(self) -> None:
        await asyncio.gather(*(ch.close() for ch in self._channels.values()))


class RequestStream:
    """An async iterator of request messages fed from a queue; ``close()`` half-closes the call."""

    _END = object()

    def __init__(self, first: Any | None = None) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.closed = False
        if first is not None:
            self._queue.put_nowait(first)

    def send(self, message: Any) -> None:
        """Queue one message (dropped after close)."""
        if not self.closed:
            self._queue.put_nowait(message)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(self._END)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            item = await self._queue.get()
            if item is self._END:
                return
            yield item
