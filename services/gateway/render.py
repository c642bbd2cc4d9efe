"""The link from a call to its face: the renderer service's ``Render`` stream.

:class:`RenderLink` is the interface the session worker uses (``RenderRequest`` in, ``RenderEvent`` out,
the ``parley.v1.Renderer`` contract); :class:`GrpcRenderLink` speaks it to the renderer service.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from parley.v1 import common_pb2, renderer_pb2, renderer_pb2_grpc
from services.orchestrator.clients import RequestStream

log = logging.getLogger("parley.gateway.render")

BEEP_HZ = 1000.0
BEEP_S = 0.1


@dataclass
class RenderParams:
    session_id: str
    replica_id: str = ""
    size: int = 0
    fps: int = 0
    test_pattern: bool = False

    def start_request(self) -> renderer_pb2.RenderRequest:
        return renderer_pb2.RenderRequest(start=renderer_pb2.RenderStart(
            session=common_pb2.SessionRef(session_id=self.session_id), replica_id=self.replica_id,
            size=self.size, fps=self.fps, pixel_format=renderer_pb2.PIXEL_FORMAT_I420,
            test_pattern=self.test_pattern, mode=renderer_pb2.REPLICA_MODE_IDLE))


class RenderLink(Protocol):
    """One call's render stream: ``start()`` returns RenderReady, ``send()`` requests, ``events()`` the rest."""

    kind: str
    ready: renderer_pb2.RenderReady

    async def start(self) -> renderer_pb2.RenderReady: ...

    def send(self, request: renderer_pb2.RenderRequest) -> None: ...

    def events(self) -> AsyncIterator[renderer_pb2.RenderEvent]: ...

    async def close(self) -> None: ...


class GrpcRenderLink:
    """``parley.v1.Renderer/Render`` over a (shared) channel."""

    kind = "renderer"

    def __init__(self, channel: grpc.aio.Channel, params: RenderParams, timeout_s: float = 20.0) -> None:
        self.stub = renderer_pb2_grpc.RendererStub(channel)
        self.params = params
        self.timeout_s = timeout_s
        self.requests = RequestStream(params.start_request())
        self.call: Any = None

    async def start(self) -> renderer_pb2.RenderReady:
        self.call = self.stub.Render(self.requests)
        try:
            first = await asyncio.wait_for(self.call.read(), self.timeout_s)
        except BaseException:
            self.call.cancel()
            raise
        if first is grpc.aio.EOF or first.WhichOneof("event") != "ready":
            self.call.cancel()
            raise RuntimeError("renderer did not answer RenderReady")
        self.ready = first.ready
        return self.ready

    def send(self, request: renderer_pb2.RenderRequest) -> None:
        self.requests.send(request)

    async def events(self) -> AsyncIterator[renderer_pb2.RenderEvent]:
        while True:
            event = await self.call.read()
            if event is grpc.aio.EOF:
                return
            yield event

    async def close(self) -> None:
        self.requests.close()
        if self.call is not None and not self.call.done():
            self.call.cancel()
