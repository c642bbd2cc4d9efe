"""The gateway process: HTTP (web client + signalling) and one :class:`CallSession` per conversation.

HTTP API (JSON errors are ``{"error": <code>, "message": <text>}``):

``GET  /c/{conversation_id}?t=<join token>``   the web client (the control plane's ``conversation_url``)
``GET  /static/...``                           its files (``services/gateway/web``)
``GET  /api/config``                           ICE servers for the browser
``POST /api/conversations/{id}/offer``         ``{"type": "offer", "sdp", "token", "resume_id"?,
                                               "test_pattern"?}`` -> ``{"type": "answer", "sdp", "resume_id"}``
``POST /api/conversations/{id}/leave``         ``{"token", "resume_id"}``: hang up (also sent as a beacon)
``GET  /api/conversations/{id}/session``       call status (join token in ``Authorization: Bearer``)
``GET  /healthz``                              liveness with the number of calls

Refusals: 400 malformed body / SDP, 401 missing / invalid / expired token, 403 a token of another
conversation, 404 unknown conversation, 409 the conversation is already in a call (without its
``resume_id``), 410 ended conversation, 413 body too large, 429 too many calls, 503 stage services
unavailable. A refusal never touches other calls.

The process also runs the standard gRPC health service and Prometheus metrics (:class:`ServiceApp`), so it
is started, probed and drained like every other Parley service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as aioredis
from aiohttp import web
from aiortc import RTCSessionDescription
from aiortc.sdp import SessionDescription
from prometheus_client import Counter

from parley.bootstrap import ServiceApp
from parley.session_store import SessionStore
from services.gateway.auth import ControlTokenVerifier, JoinRefused, TokenVerifier
from services.gateway.config import GatewayConfig
from services.gateway.session import SESSIONS_ACTIVE, CallSession, JoinOptions
from services.orchestrator.clients import StageClients

log = logging.getLogger("parley.gateway")

OFFERS = Counter("parley_gateway_offers_total", "Signalling requests by outcome (HTTP status)", ["status"])
MAX_SDP_CHARS = 64 * 1024


def configure_host_candidates(addresses: list[str]) -> None:
    """Offer exactly ``addresses`` as ICE host candidates (aioice otherwise skips loopback and takes every
    interface address). Process-wide: the gateway is the only ICE user in its process."""
    if not addresses:
        return
    import aioice.ice

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in addresses if (use_ipv6 if ":" in a else use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


def refuse(status: int, code: str, message: str) -> web.Response:
    OFFERS.labels(str(status)).inc()
    return web.json_response({"error": code, "message": message}, status=status)


def check_offer_sdp(sdp: str) -> None:
    """Raise ValueError with a readable reason unless ``sdp`` looks like a usable WebRTC offer."""
    if len(sdp) > MAX_SDP_CHARS:
        raise ValueError(f"the SDP is larger than {MAX_SDP_CHARS} characters")
    if not sdp.lstrip().startswith("v=0"):
        raise ValueError("the SDP must start with 'v=0'")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:
        raise ValueError(f"the SDP does not parse ({type(exc).__name__})") from None
    if not parsed.media:
        raise ValueError("the SDP has no media sections")
    kinds = [m.kind for m in parsed.media]
    if "audio" not in kinds:
        raise ValueError("the offer must carry the microphone (an audio section)")
    for m in parsed.media:
        if not (m.ice.usernameFragment and m.ice.password):
            raise ValueError(f"the {m.kind} section has no ICE credentials (a=ice-ufrag / a=ice-pwd)")
        if not (m.dtls and m.dtls.fingerprints):
            raise ValueError(f"the {m.kind} section has no DTLS fingerprint")


class Gateway:
    """Calls, their shared clients (stage services, renderer, Redis) and the HTTP app."""

    def __init__(self, config: GatewayConfig, verifier: TokenVerifier | None = None) -> None:
        self.config = config
        self.sessions: dict[str, CallSession] = {}
        self._pending: set[str] = set()
        self._verifier = verifier
        self.redis: Any = None
        self.clients: StageClients | None = None
        self.store: SessionStore | None = None
        self.renderer_channel: grpc.aio.Channel | None = None
        self.runner: web.AppRunner | None = None
        self.http_port = 0

    @property
    def verifier(self) -> TokenVerifier:
        if self._verifier is None:
            self._verifier = ControlTokenVerifier(self.redis, self.config.key_prefix, self.config.join_token_secret)
        return self._verifier

    # -- lifecycle ----------------------------------------------------------------------------------
    async def startup(self) -> None:
        cfg = self.config
        for noisy in ("aioice", "aiortc"):  # per-candidate-pair INFO lines
            logging.getLogger(noisy).setLevel(logging.WARNING)
        configure_host_candidates(cfg.webrtc.host_candidates)
        self.redis = aioredis.from_url(cfg.server.redis_url, decode_responses=True)
        await self.redis.ping()
        self.clients = StageClients(cfg.orchestrator.endpoints)
        self.store = SessionStore(cfg.server.redis_url, ttl_s=cfg.orchestrator.session_ttl_s, prefix=cfg.key_prefix)
        if cfg.renderer.address:
            self.renderer_channel = grpc.aio.insecure_channel(
                cfg.renderer.address, options=[("grpc.max_receive_message_length", 32 * 1024 * 1024)])
        self.runner = web.AppRunner(self.http_app(), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, cfg.http.host, cfg.http.port)
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("http serving", extra={"url": f"http://{cfg.http.host}:{self.http_port}"})

    async def shutdown(self) -> None:
        await asyncio.gather(*(s.close("shutdown") for s in list(self.sessions.values())), return_exceptions=True)
        if self.runner is not None:
            await self.runner.cleanup()
        if self.clients is not None:
            await self.clients.close()
        if self.renderer_channel is not None:
            await self.renderer_channel.close()
        if self.store is not None:
            await self.store.close()
        if self.redis is not None:
            await self.redis.aclose()

    def _closed(self, session: CallSession) -> None:
        if self.sessions.get(session.conversation_id) is session:
            del self.sessions[session.conversation_id]
        SESSIONS_ACTIVE.set(len(self.sessions))

    # -- HTTP -------------------------------------------------------------------------------------------
    def http_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.http.max_body_bytes)
        web_dir = Path(self.config.web_dir)
        app.router.add_get("/", self.index)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/favicon.ico", self.no_content)
        app.router.add_get("/api/config", self.api_config)
        app.router.add_get("/c/{conversation_id}", self.page)
        app.router.add_post("/api/conversations/{conversation_id}/offer", self.offer)
        app.router.add_post("/api/conversations/{conversation_id}/leave", self.leave)
        app.router.add_get("/api/conversations/{conversation_id}/session", self.session_status)
        app.router.add_static("/static/", web_dir, show_index=False)
        return app

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text="Parley gateway: open a conversation URL (/c/<conversation id>?t=<token>).\n")

    async def no_content(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "calls": len(self.sessions),
                                  "max_calls": self.config.server.max_sessions})

    async def api_config(self, request: web.Request) -> web.Response:
        wrtc = self.config.webrtc
        servers = wrtc.browser_ice_servers if wrtc.browser_ice_servers is not None else wrtc.ice_servers
        return web.json_response({
            "ice_servers": [{"urls": s.urls, **({"username": s.username} if s.username else {}),
                             **({"credential": s.credential} if s.credential else {})} for s in servers],
            "max_text_chars": self.config.max_text_chars,
        })

    async def page(self, request: web.Request) -> web.StreamResponse:
        path = Path(self.config.web_dir) / "index.html"
        return web.FileResponse(path, headers={"Cache-Control": "no-store"})

    @staticmethod
    async def _json_body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except web.HTTPRequestEntityTooLarge:
            raise JoinRefused(413, "too_large", "the request body is too large") from None
        except (ValueError, UnicodeDecodeError):
            raise JoinRefused(400, "bad_request", "the request body must be JSON") from None
        if not isinstance(body, dict):
            raise JoinRefused(400, "bad_request", "the request body must be a JSON object")
        return body

    @staticmethod
    def _token(request: web.Request, body: dict[str, Any]) -> str:
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        token = body.get("token") or request.query.get("t") or ""
        return token if isinstance(token, str) else ""

    async def offer(self, request: web.Request) -> web.Response:
        conversation_id = request.match_info["conversation_id"]
        try:
            body = await self._json_body(request)
            sdp, kind = body.get("sdp"), body.get("type")
            if kind != "offer" or not isinstance(sdp, str) or not sdp:
                raise JoinRefused(400, "bad_request", "expected {\"type\": \"offer\", \"sdp\": <SDP>, \"token\": ...}")
            existing = self.sessions.get(conversation_id)
            resume_id = body.get("resume_id")
            try:
                join = await self.verifier.verify(self._token(request, body), conversation_id)
            except JoinRefused as exc:
                # A call outlives its link: a live call may reconnect with its resume id after the token expired.
                live = existing is not None and not existing.closed and resume_id == existing.resume_id
                if not (exc.code == "token_expired" and live):
                    raise
            if existing is not None and not existing.closed:
                if not resume_id or resume_id != existing.resume_id:
                    raise JoinRefused(409, "in_call", "this conversation is already in a call (another tab?)")
                check_offer_sdp(sdp)
                answer = await existing.negotiate(RTCSessionDescription(sdp=sdp, type="offer"))
                OFFERS.labels("200").inc()
                log.info("call resumed", extra={"conversation_id": conversation_id})
                return self._answer(existing, answer)
            if conversation_id in self._pending:
                raise JoinRefused(409, "in_call", "this conversation is already joining")
            if len(self.sessions) + len(self._pending) >= self.config.server.max_sessions:
                raise JoinRefused(429, "too_many_sessions",
                                  f"the gateway is at its limit of {self.config.server.max_sessions} calls; "
                                  "try again later")
            check_offer_sdp(sdp)
            test_pattern = bool(body.get("test_pattern"))
            if test_pattern and not self.config.renderer.allow_test_pattern:
                raise JoinRefused(400, "bad_request", "the test pattern is not enabled on this gateway")
        except JoinRefused as exc:
            return refuse(exc.status, exc.code, exc.message)
        except ValueError as exc:
            return refuse(400, "bad_sdp", f"malformed SDP offer: {exc}")
        return await self._start_call(conversation_id, join, JoinOptions(test_pattern=test_pattern), sdp)

    async def _start_call(self, conversation_id: str, join: Any, options: JoinOptions, sdp: str) -> web.Response:
        self._pending.add(conversation_id)
        session = CallSession(self.config, join, options, self.clients, self.store, self.redis,
                              self.renderer_channel, on_closed=self._closed)
        try:
            try:
                await asyncio.wait_for(self.clients.wait_ready(5.0), 6.0)
                await session.start()
            except Exception as exc:
                log.exception("call start failed", extra={"conversation_id": conversation_id})
                await session.close("start_failed")
                return refuse(503, "unavailable", f"the conversation services are unavailable: {exc}")
            self.sessions[conversation_id] = session
            SESSIONS_ACTIVE.set(len(self.sessions))
            try:
                answer = await session.negotiate(RTCSessionDescription(sdp=sdp, type="offer"))
            except Exception as exc:
                await session.close("bad_offer")
                return refuse(400, "bad_sdp", f"malformed SDP offer: {type(exc).__name__}: {exc}")
        finally:
            self._pending.discard(conversation_id)
        OFFERS.labels("200").inc()
        log.info("call started", extra={"conversation_id": conversation_id, "renderer": session.render.kind})
        return self._answer(session, answer)

    @staticmethod
    def _answer(session: CallSession, answer: RTCSessionDescription) -> web.Response:
        return web.json_response({"type": answer.type, "sdp": answer.sdp, "resume_id": session.resume_id,
                                  "conversation_id": session.conversation_id})

    async def leave(self, request: web.Request) -> web.Response:
        conversation_id = request.match_info["conversation_id"]
        try:
            try:
                body = json.loads(await request.text() or "{}")
            except ValueError:
                raise JoinRefused(400, "bad_request", "the request body must be JSON") from None
            if not isinstance(body, dict):
                raise JoinRefused(400, "bad_request", "the request body must be a JSON object")
            await self.verifier.verify(self._token(request, body), conversation_id)
            session = self.sessions.get(conversation_id)
            if session is None or body.get("resume_id") != session.resume_id:
                raise JoinRefused(404, "no_call", "no call of yours is running in this conversation")
        except JoinRefused as exc:
            return web.json_response({"error": exc.code, "message": exc.message}, status=exc.status)
        await session.close("hangup")
        return web.json_response({"ok": True})

    async def session_status(self, request: web.Request) -> web.Response:
        conversation_id = request.match_info["conversation_id"]
        try:
            await self.verifier.verify(self._token(request, {}), conversation_id)
        except JoinRefused as exc:
            return web.json_response({"error": exc.code, "message": exc.message}, status=exc.status)
        session = self.sessions.get(conversation_id)
        if session is None:
            return web.json_response({"error": "no_call", "message": "no call is running"}, status=404)
        media = session.media
        return web.json_response({
            "conversation_id": conversation_id, "renderer": session.render.kind if session.render else "",
            "connection": session.pc.connectionState if session.pc else "new",
            "video_frames_in": media.video_frames_in if media else 0,
            "video_frames_dropped": media.video_frames_dropped if media else 0,
            "video_send_lag_ms": round(1000 * media.video_send_lag, 1) if media else None,
            "camera_frames": session.camera.frames, "playing": session.playing,
            "rtp_origin": session.rtp_origin, **session.stats,
        })


def build_app(config: GatewayConfig, verifier: TokenVerifier | None = None) -> ServiceApp:
    """The gateway as a :class:`ServiceApp` (gRPC health + metrics) running the HTTP side as a start-up hook."""
    app = ServiceApp("gateway", config.server)
    gateway = Gateway(config, verifier)
    app.on_startup(gateway.startup)
    app.on_shutdown(gateway.shutdown)
    app.gateway = gateway  # type: ignore[attr-defined]
    return app


@contextlib.asynccontextmanager
async def running_gateway(config: GatewayConfig, verifier: TokenVerifier | None = None):
    """Serve a gateway inside the current event loop (tests, embedding); yields the :class:`Gateway`."""
    app = build_app(config, verifier)
    async with app.running():
        yield app.gateway  # type: ignore[attr-defined]
