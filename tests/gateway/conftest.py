"""Fixtures of the gateway tests: the whole stack (stage services, renderer, control plane, gateway) as
processes on loopback, conversations created through the control API, and a real headless Chromium whose
microphone is a WAV file synthesized in the test.

"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis.asyncio as aioredis

from parley.audio import write_wav
from parley.redis_server import free_port
from services.cli.stack import Stack

pytest.importorskip("aiortc", reason="the gateway's dependencies (aiortc, aiohttp) are not installed")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
STAGES = ("turn", "asr", "llm", "tts")
TENANT = "gwtest"
PERSONA_PROMPT = "You are a friendly assistant in a video call. Answer in one or two short spoken sentences."


@dataclass
class Parley:
    """A running stack: where everything listens, and the control API key."""

    redis_url: str
    endpoints: dict[str, str]
    gateway_url: str
    control: str
    api_key: str
    renderer: str
    run_dir: Path
    gateway_pid: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),)


def gateway_env(endpoints: dict[str, str], http_port: int, renderer: str, max_sessions: int = 2) -> dict[str, str]:
    return {
        "PARLEY_GATEWAY__HTTP__PORT": str(http_port),
        "PARLEY_GATEWAY__ORCHESTRATOR__ENDPOINTS__TURN": endpoints["turn"],
        "PARLEY_GATEWAY__ORCHESTRATOR__ENDPOINTS__ASR": endpoints["asr"],
        "PARLEY_GATEWAY__ORCHESTRATOR__ENDPOINTS__LLM": endpoints["llm"],
        "PARLEY_GATEWAY__ORCHESTRATOR__ENDPOINTS__TTS": endpoints["tts"],
        "PARLEY_GATEWAY__RENDERER__ADDRESS": renderer,
        "PARLEY_GATEWAY__RENDERER__ALLOW_TEST_PATTERN": "true",
        "PARLEY_GATEWAY__WEBRTC__HOST_CANDIDATES": "[127.0.0.1]",
        "PARLEY_GATEWAY__SERVER__MAX_SESSIONS": str(max_sessions),
        "PARLEY_GATEWAY__WEBRTC__RECONNECT_GRACE_S": "8",
    }


async def _issue_key(redis_url: str, prefix: str = "parley:") -> str:
    from services.control.auth import KeyStore

    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        return (await KeyStore(client, prefix).create(TENANT, "gateway tests")).key
    finally:
        await client.aclose()


@contextlib.contextmanager
def parley_stack(redis_url: str, run_dir: Path, max_sessions: int = 2,
                 stage_env: dict[str, str] | None = None) -> Any:
    """Stage services + renderer + control (one Stack), then the gateway (a second Stack)."""
    http_port = free_port()
    gateway_url = f"http://127.0.0.1:{http_port}"
    services = (*STAGES, "control", "renderer")
    env = {"PARLEY_CONTROL__PUBLIC_URL": gateway_url, "PARLEY_RENDERER__MAX_SESSIONS": "4",
           **(stage_env or {})}
    stages = Stack(run_dir=run_dir / "stages", redis_url=redis_url, services=services, extra_env=env)
    info = stages.start(timeout_s=400)
    gateway = None
    try:
        renderer = info.endpoints["renderer"]
        gateway = Stack(run_dir=run_dir / "gateway", redis_url=redis_url, services=("gateway",),
                        extra_env=gateway_env(info.endpoints, http_port, renderer, max_sessions))
        gw = gateway.start(timeout_s=60)
        key = asyncio.run(_issue_key(redis_url))
        yield Parley(redis_url=redis_url, endpoints=info.endpoints, gateway_url=gateway_url,
                     control=info.endpoints["control"], api_key=key, renderer=renderer,
                     run_dir=run_dir, gateway_pid=gw.pids["gateway"])
    finally:
        codes = gateway.stop() if gateway is not None else {}
        codes.update(stages.stop())
    bad = {k: v for k, v in codes.items() if v != 0}
    assert not bad, f"unclean exit codes: {bad}"


@pytest.fixture(scope="session")
def parley(redis_url, tmp_path_factory, request):
    """The whole stack on loopback (module docstring); every process must drain and exit 0. The renderer
    uses the test session's replica store (built once, shared with the renderer tests)."""
    request.getfixturevalue("astronaut_replica")
    with parley_stack(redis_url, tmp_path_factory.mktemp("parley")) as stack:
        yield stack


# -- control API -----------------------------------------------------------------------------------------
class ControlClient:
    """The control plane's Conversations API with the test tenant's key."""

    def __init__(self, parley: Parley) -> None:
        from parley.v1 import control_pb2_grpc

        self.parley = parley
        self.channel = grpc.aio.insecure_channel(parley.control)
        self.conversations = control_pb2_grpc.ConversationsStub(self.channel)

    async def create(self, **fields: Any) -> Any:
        from parley.v1 import control_pb2 as pb

        return await self.conversations.CreateConversation(
            pb.CreateConversationRequest(**fields), metadata=self.parley.metadata, timeout=10)

    async def persona(self, name: str, system_prompt: str) -> str:
        from parley.v1 import control_pb2 as pb
        from parley.v1 import control_pb2_grpc

        stub = control_pb2_grpc.PersonasStub(self.channel)
        persona = await stub.CreatePersona(pb.CreatePersonaRequest(persona=pb.Persona(
            name=name, system_prompt=system_prompt)), metadata=self.parley.metadata, timeout=10)
        return persona.persona_id

    async def interact(self, conversation_id: str, **action: Any) -> Any:
        from parley.v1 import control_pb2 as pb

        return await self.conversations.Interact(pb.InteractRequest(conversation_id=conversation_id, **action),
                                                 metadata=self.parley.metadata, timeout=10)

    async def end(self, conversation_id: str) -> Any:
        from parley.v1 import control_pb2 as pb

        return await self.conversations.EndConversation(pb.EndConversationRequest(conversation_id=conversation_id),
                                                        metadata=self.parley.metadata, timeout=10)

    async def events(self, conversation_id: str) -> list[tuple[str, dict[str, Any]]]:
        """The conversation's events stream as (type, data), straight from Redis."""
        from services.control import streams

        client = aioredis.from_url(self.parley.redis_url, decode_responses=True)
        try:
            entries = await client.xrange(streams.events_key(conversation_id))
        finally:
            await client.aclose()
        return [streams.decode_entry(fields)[:2] for _id, fields in entries]

    async def close(self) -> None:
        await self.channel.close()


@pytest.fixture
async def control(parley):
    client = ControlClient(parley)
    yield client
    await client.close()


# -- browser ---------------------------------------------------------------------------------------------
def mic_wav(path: Path, speech: list[tuple[float, Any]], total_s: float, rate: int = 48_000) -> Path:
    """A mono 48 kHz WAV of ``total_s`` seconds with each (start_s, Audio) placed at its start."""
    out = np.zeros(round(total_s * rate), np.float32)
    for start, audio in speech:
        assert audio.sample_rate == rate
        i = round(start * rate)
        out[i:i + len(audio.samples)] = audio.samples[: max(0, len(out) - i)]
    return write_wav(path, out, rate)


def require_chromium() -> None:
    """Skip the calling test unless Chromium and Python playwright are installed."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright", reason="python playwright is not installed")


def chromium_args(wav: Path | None) -> list[str]:
    args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required",
            "--disable-renderer-backgrounding", "--disable-background-timer-throttling"]
    if wav is not None:
        args.append(f"--use-file-for-fake-audio-capture={wav}%noloop")
    return args


@contextlib.asynccontextmanager
async def browser(tmp_dir: Path, wav: Path | None, permissions: bool = True) -> AsyncIterator[Any]:
    """A headless Chromium (persistent context) whose fake microphone plays ``wav`` once."""
    require_chromium()
    from playwright.async_api import async_playwright

    args = chromium_args(wav)
    if not permissions:
        args.remove("--use-fake-ui-for-media-stream")
        args.append("--deny-permission-prompts")
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_dir / "chromium-profile"), executable_path=CHROMIUM, headless=False, args=args,
            viewport={"width": 800, "height": 900})
        try:
            yield context
        finally:
            for page in context.pages:  # hang up like a user closing the tab (frees the gateway's slot)
                with contextlib.suppress(Exception):
                    await page.evaluate("() => window.parley && !window.parley.ended && window.parley.hangup()")
            await asyncio.sleep(0.3)
            await context.close()


async def open_call(context: Any, url: str, page: Any = None, **query: Any) -> Any:
    """Open the web client at ``url`` (+ query) and wait until the call is connected."""
    if page is None:
        page = context.pages[0] if context.pages else await context.new_page()
    logs: list[str] = []
    page.on("console", lambda m: logs.append(f"{m.type}: {m.text}"))
    page.console_logs = logs
    if query:
        url += "".join(f"&{k}={v}" for k, v in query.items())
    await page.goto(url)
    await wait_for(page, "p => p.connected || p.error", timeout_s=30)
    state = await parley_state(page)
    assert state["connected"], f"call did not connect: {state['error']} {logs[-5:]}"
    return page


async def parley_state(page: Any) -> dict[str, Any]:
    return await page.evaluate("() => JSON.parse(JSON.stringify(window.parley))")


async def wait_for(page: Any, predicate: str, timeout_s: float = 60.0) -> Any:
    """Wait until ``predicate(window.parley)`` (a JS arrow function) is truthy."""
    return await page.wait_for_function(f"() => window.parley && ({predicate})(window.parley)",
                                        timeout=timeout_s * 1000, polling=100)


def dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str))


# -- a Python WebRTC client (aiortc) for signalling and isolation tests -----------------------------------
class RtcClient:
    """Joins like the web client (silent microphone, video received, data channel ``parley``) and counts
    what arrives. Cheap enough to hold several calls open without a browser."""

    def __init__(self, gateway_url: str, conversation_id: str, token: str) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection
        from aiortc.mediastreams import AudioStreamTrack

        from services.gateway.server import configure_host_candidates

        configure_host_candidates(["127.0.0.1"])
        self.url = f"{gateway_url}/api/conversations/{conversation_id}"
        self.token = token
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTrack(AudioStreamTrack())
        self.pc.addTransceiver("video", direction="recvonly")
        self.dc = self.pc.createDataChannel("parley")
        self.messages: list[dict[str, Any]] = []
        self.video_frames = 0
        self.video_pts: list[int] = []
        self.last_video: Any = None  # the latest decoded av.VideoFrame
        self.audio_frames = 0
        self.resume_id: str | None = None
        self._tasks: list[asyncio.Task] = []
        self.dc.on("message", lambda m: self.messages.append(json.loads(m)))

        @self.pc.on("track")
        def on_track(track: Any) -> None:
            self._tasks.append(asyncio.create_task(self._consume(track)))

    async def _consume(self, track: Any) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if track.kind == "video":
                self.video_frames += 1
                self.video_pts.append(frame.pts)
                self.last_video = frame
            else:
                self.audio_frames += 1

    async def offer_sdp(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def join(self, **extra: Any) -> Any:
        """POST the offer; on 200 apply the answer. Returns the httpx response."""
        import httpx
        from aiortc import RTCSessionDescription

        body = {"type": "offer", "sdp": await self.offer_sdp(), "token": self.token, **extra}
        async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
            response = await http.post(self.url + "/offer", json=body)
        if response.status_code == 200:
            answer = response.json()
            self.resume_id = answer["resume_id"]
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        return response

    async def wait(self, predicate: Any, timeout_s: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not predicate(self):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"condition not met; messages: {[m.get('type') for m in self.messages][-10:]}")
            await asyncio.sleep(0.1)

    def send(self, message: dict[str, Any]) -> None:
        self.dc.send(json.dumps(message))

    async def close(self) -> None:
        """Hang up (the leave endpoint, as the web client does) and close the peer connection."""
        import httpx

        if self.resume_id:
            async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
                with contextlib.suppress(httpx.HTTPError):
                    await http.post(self.url + "/leave", json={"token": self.token, "resume_id": self.resume_id})
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def token_of(url: str) -> str:
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(url).query)["t"][0]
