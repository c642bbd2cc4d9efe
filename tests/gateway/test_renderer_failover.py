"""Renderer faults: a render stream that dies mid-call ends that call cleanly with a message; with no
renderer reachable a new call is refused with 503 and a message; the gateway keeps serving."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from parley.redis_server import free_port
from parley.v1 import renderer_pb2, renderer_pb2_grpc
from services.gateway.config import load_gateway_config
from services.gateway.server import running_gateway
from tests.gateway.conftest import RtcClient, token_of

pytestmark = pytest.mark.e2e

I420 = renderer_pb2.PIXEL_FORMAT_I420


class DyingRenderer(renderer_pb2_grpc.RendererServicer):
    """Streams 1.5 s of real-time frames, then fails the stream."""

    async def Render(self, request_iterator, context):
        await request_iterator.__anext__()
        yield renderer_pb2.RenderEvent(ready=renderer_pb2.RenderReady(
            width=64, height=64, fps=30, pixel_format=I420, audio_sample_rate=24_000))
        data = np.full(64 * 64 * 3 // 2, 100, np.uint8).tobytes()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for k in range(45):
            await asyncio.sleep(max(0.0, t0 + k / 30 - loop.time()))
            yield renderer_pb2.RenderEvent(video=renderer_pb2.RenderedFrame(
                data=data, width=64, height=64, pixel_format=I420, pts_us=round(k * 1e6 / 30), index=k))
        await context.abort(grpc.StatusCode.INTERNAL, "renderer crashed")


async def test_renderer_crash_ends_the_call_cleanly_and_new_calls_get_a_clear_503(parley, control):
    server = grpc.aio.server()
    renderer_pb2_grpc.add_RendererServicer_to_server(DyingRenderer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    http_port = free_port()
    env = {"PARLEY_COMMON__SERVER__REDIS_URL": parley.redis_url}
    for stage in ("turn", "asr", "llm", "tts"):
        env[f"PARLEY_GATEWAY__ORCHESTRATOR__ENDPOINTS__{stage.upper()}"] = parley.endpoints[stage]
    config = load_gateway_config(environ=env, server={"port": 0, "metrics_port": 0, "drain_notice_seconds": 0},
                                 http={"port": http_port}, renderer={"address": f"127.0.0.1:{port}",
                                                                     "connect_timeout_s": 3},
                                 webrtc={"host_candidates": ["127.0.0.1"]}, greeting=False)
    conv = await control.create(name="renderer crash")
    later = await control.create(name="after the crash")
    url = f"http://127.0.0.1:{http_port}"
    async with running_gateway(config) as gateway:
        client = RtcClient(url, conv.conversation_id, token_of(conv.conversation_url))
        try:
            assert (await client.join()).status_code == 200
            await client.wait(lambda c: any(m["type"] == "hello" for m in c.messages), 20)
            assert next(m for m in client.messages if m["type"] == "hello")["renderer"] == "renderer"
            await client.wait(lambda c: any(m["type"] == "error" for m in c.messages), 20)
            assert client.video_frames > 0  # the face was streaming before the crash
            await client.wait(lambda c: not gateway.sessions, 10)  # the gateway ended the call
        finally:
            await client.close()
        assert "renderer stopped" in next(m for m in client.messages if m["type"] == "error")["message"]

        await server.stop(0)  # now nothing answers at the renderer's address
        second = RtcClient(url, later.conversation_id, token_of(later.conversation_url))
        try:
            response = await second.join()
            assert response.status_code == 503
            assert "renderer" in response.json()["message"]
        finally:
            await second.close()
