"""Fixtures of the control-plane tests: the control service on loopback over the real test Redis,
API keys, gRPC stubs with credentials, a photo, and a local webhook receiver."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from parley.v1 import control_pb2_grpc as pb_grpc
from services.control.auth import KeyStore
from services.control.config import ControlServiceConfig
from services.control.server import build_app


def make_config(redis_url: str, tmp_path: Any, prefix: str | None = None, **overrides: Any) -> ControlServiceConfig:
    """Loopback, free ports, the test Redis, a private key prefix, fast timers, the fake builder."""
    base: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "metrics_port": 0, "redis_url": redis_url,
                   "drain_seconds": 0.1, "drain_notice_seconds": 0.0},
        "key_prefix": prefix or f"t{uuid.uuid4().hex[:8]}:",
        "public_url": "http://127.0.0.1:8080",
        "jobs": {"replica_dir": str(tmp_path / "replicas"), "builder": "tests.control.fake_builder:build",
                 "nice": 0, "lease_s": 5},
        "webhooks": {"allow_private_callbacks": True, "backoff_initial_s": 0.2, "backoff_factor": 2.0,
                     "poll_s": 0.05, "max_attempts": 5, "timeout_s": 3},
        "reaper_interval_s": 0.2,
        "dispatch_block_ms": 100,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return ControlServiceConfig.model_validate(base)


async def issue_key(config: ControlServiceConfig, tenant: str) -> str:
    client = aioredis.from_url(config.server.redis_url, decode_responses=True)
    try:
        return (await KeyStore(client, config.key_prefix).create(tenant)).key
    finally:
        await client.aclose()


@dataclass
class Stubs:
    """The four control stubs on one channel, sending ``key`` with every call."""

    channel: grpc.aio.Channel
    key: str | None

    def __post_init__(self) -> None:
        self.personas = pb_grpc.PersonasStub(self.channel)
        self.replicas = pb_grpc.ReplicasStub(self.channel)
        self.conversations = pb_grpc.ConversationsStub(self.channel)
        self.webhooks = pb_grpc.WebhooksStub(self.channel)

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.key}"),) if self.key else ()


@dataclass
class Control:
    config: ControlServiceConfig
    address: str = ""
    app: Any = None
    _cm: Any = None

    async def start(self) -> Control:
        self.app = build_app(self.config)
        self._cm = self.app.running()
        self.address = await self._cm.__aenter__()
        return self

    async def stop(self) -> None:
        if self._cm is not None:
            await self._cm.__aexit__(None, None, None)
            self._cm = None

    @property
    def runtime(self) -> Any:
        return self.app.runtime


@pytest.fixture
def control_config(redis_url: str, tmp_path: Any) -> ControlServiceConfig:
    return make_config(redis_url, tmp_path)


@pytest.fixture
async def control(control_config: ControlServiceConfig):
    ctl = await Control(control_config).start()
    yield ctl
    await ctl.stop()


@pytest.fixture
async def api_key(control: Control) -> str:
    return await issue_key(control.config, "acme")


@pytest.fixture
async def stubs(control: Control, api_key: str):
    async with grpc.aio.insecure_channel(control.address) as channel:
        yield Stubs(channel, api_key)


@pytest.fixture
async def redis_client(redis_url: str):
    client = aioredis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


def png_photo(size: int = 64) -> bytes:
    """A small real PNG (a gradient), enough for the fake builder."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size]
    image = np.stack([x * 4 % 256, y * 4 % 256, (x + y) * 2 % 256], axis=-1).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def face_photo() -> bytes:
    """A real face (scikit-image's astronaut, public domain) as JPEG."""
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 (stdlib http.server in a thread); fails the first ``fail_first``
    attempts of every event with HTTP 500."""

    fail_first: int = 0
    received: list[Received] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/parley"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                event_id = self.headers.get("X-Parley-Event-Id", "")
                n = receiver.attempts[event_id] = receiver.attempts.get(event_id, 0) + 1
                if n <= receiver.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.received.append(Received(self.path, dict(self.headers.items()), body, time.time()))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.received]


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


async def wait_for(predicate: Callable[[], Any], within: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` (sync or async) until truthy; returns its value."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(interval)
