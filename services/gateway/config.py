"""Typed configuration of the WebRTC gateway (config section ``gateway``).

Every key can be set in the YAML file named by ``PARLEY_CONFIG`` (section ``gateway:``) or by environment,
nested with ``__``, e.g.::

    PARLEY_GATEWAY__HTTP__PORT=8080
    PARLEY_GATEWAY__WEBRTC__HOST_CANDIDATES='[127.0.0.1]'
    PARLEY_GATEWAY__WEBRTC__ICE_SERVERS='[{urls: [stun:stun.example.com:3478]}]'
    PARLEY_GATEWAY__ORCHESTRATOR__ENDPOINTS__TURN=turn:50051
    PARLEY_GATEWAY__RENDERER__ADDRESS=renderer:50055

The gateway is one process with two listeners: ``http`` (the web client, signalling, JSON API) and
``server`` (gRPC health + reflection, Prometheus ``/metrics`` on ``server.metrics_port``), so process
supervisors and the local stack launcher probe it like every other Parley service.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from parley.config import ServerConfig, Settings, load_config
from services.orchestrator.config import OrchestratorConfig

DEFAULT_GRPC_PORT = 50065
DEFAULT_HTTP_PORT = 8080
WEB_DIR = Path(__file__).resolve().parent / "web"


class GatewayServerConfig(ServerConfig):
    """gRPC health / metrics listener. ``max_sessions`` = concurrent conversations (browser calls)."""

    port: int = Field(DEFAULT_GRPC_PORT, ge=0, le=65535, description="gRPC health port; 0 picks a free port")
    max_sessions: int = Field(8, gt=0, description="concurrent calls; more are refused with HTTP 429")


class HttpConfig(Settings):
    """The HTTP listener: web client, signalling."""

    host: str = Field("127.0.0.1", description="bind address (0.0.0.0 behind a TLS-terminating proxy)")
    port: int = Field(DEFAULT_HTTP_PORT, ge=0, le=65535, description="0 picks a free port")
    max_body_bytes: int = Field(256 * 1024, gt=0, description="largest accepted request body (SDP offers)")


class IceServer(Settings):
    """One STUN / TURN server handed to the gateway's ICE agent and to the browser."""

    urls: list[str] = Field(..., min_length=1, description="stun:host:port, turn:host:port?transport=udp|tcp")
    username: str = ""
    credential: str = ""

    @field_validator("urls", mode="before")
    @classmethod
    def _one_url(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class WebRtcConfig(Settings):
    """Peer connections."""

    ice_servers: list[IceServer] = Field(
        default_factory=list,
        description="STUN/TURN servers for the gateway and (unless browser_ice_servers is set) the browser; "
        "empty = host candidates only (same network / loopback)",
    )
    browser_ice_servers: list[IceServer] | None = Field(
        None, description="ICE servers the web client uses; None = the same as ice_servers"
    )
    host_candidates: list[str] = Field(
        default_factory=list,
        description="host-candidate IP addresses the gateway offers; empty = every interface address except "
        "loopback (aioice's default). ['127.0.0.1'] for loopback tests and single-machine setups",
    )
    video_codec: Literal["vp8", "h264"] = Field("vp8", description="preferred video codec")
    reconnect_grace_s: float = Field(
        20.0, ge=0, description="a call whose connection failed or closed stays resumable this long"
    )
    connect_timeout_s: float = Field(30.0, gt=0, description="a call that never connects is dropped after this")
    av_send_delay_ms: float = Field(
        30.0, ge=0, le=200,
        description="audio and video packets of one pts leave this long after it is due: room to encode the "
        "video and to hold Opus audio back by its pipeline delay, so the browser's lip sync (RTCP sender "
        "reports) sees both streams on one clock",
    )
    max_queue_s: float = Field(
        0.5, gt=0, le=10, description="outgoing media older than this (sender stalled) is dropped, video first"
    )


class RendererLink(Settings):
    """Where the replica's face comes from."""

    address: str = Field("127.0.0.1:50055", description="renderer service (parley.v1.Renderer)")
    size: int = Field(0, ge=0, le=4096, description="frame width = height; 0 = the renderer's default")
    fps: int = Field(0, ge=0, le=60, description="0 = the renderer's default")
    connect_timeout_s: float = Field(20.0, gt=0, description="wait for the renderer's RenderReady")
    allow_test_pattern: bool = Field(
        False, description="let the web client ask for the A/V sync test pattern (?test_pattern=1)"
    )


class GatewayConfig(Settings):
    """Everything the gateway reads at start-up."""

    server: GatewayServerConfig = Field(default_factory=GatewayServerConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    webrtc: WebRtcConfig = Field(default_factory=WebRtcConfig)
    renderer: RendererLink = Field(default_factory=RendererLink)
    orchestrator: OrchestratorConfig = Field(default_factory=OrchestratorConfig)
    key_prefix: str = Field("parley:", description="prefix of the control plane's and session store's Redis keys")
    join_token_secret: str = Field(
        "", description="HMAC key of join tokens; '' = the control plane's (kept in Redis)"
    )
    web_dir: str = Field(str(WEB_DIR), description="static files of the web client")
    stale_interaction_s: float = Field(
        60.0, ge=0, description="echo / respond / interrupt interactions older than this at join are skipped"
    )
    max_text_chars: int = Field(2_000, gt=0, description="longest text message from the web client")
    greeting: bool = Field(True, description="speak the conversation's greeting when the participant connects")

    @field_validator("server", mode="before")
    @classmethod
    def _keep_default_port(cls, value: Any) -> Any:
        """A partial ``server`` mapping (e.g. only ``redis_url`` from ``common``) keeps the gateway defaults."""
        if isinstance(value, dict):
            return {"port": DEFAULT_GRPC_PORT, "max_sessions": 8, **value}
        return value

    @model_validator(mode="after")
    def _share_redis(self) -> GatewayConfig:
        # One Redis for the gateway: the orchestrator's session store follows server.redis_url.
        if self.orchestrator.redis_url != self.server.redis_url:
            object.__setattr__(
                self, "orchestrator", self.orchestrator.model_copy(update={"redis_url": self.server.redis_url})
            )
        return self


def load_gateway_config(
    yaml_path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None, **overrides: Any
) -> GatewayConfig:
    """The ``gateway`` section from defaults, YAML (``common`` + ``gateway``) and ``PARLEY_GATEWAY__*`` env."""
    return load_config(GatewayConfig, "gateway", yaml_path=yaml_path, environ=environ, **overrides)
