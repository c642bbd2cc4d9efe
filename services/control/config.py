"""Settings of the control service (section ``control`` of the Parley config).

Every field can be set in YAML (``control:`` section) or with ``PARLEY_CONTROL__<FIELD>`` variables::

    PARLEY_CONTROL__PUBLIC_URL=https://talk.example.com
    PARLEY_CONTROL__WEBHOOKS__ALLOW_PRIVATE_CALLBACKS=true
    PARLEY_CONTROL__JOBS__REPLICA_DIR=/var/lib/parley/replicas

The service keeps no state of its own: everything lives in Redis (``server.redis_url``) and, for
replica files, in ``jobs.replica_dir`` (share it between instances when running more than one).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from parley.config import ServerConfig, Settings, load_config

DEFAULT_PORT = 50060


class AuthConfig(Settings):
    """API keys and join tokens."""

    join_token_secret: str = Field(
        "",
        description="HMAC key for join tokens; empty = a random one generated once and kept in Redis "
        "(shared by every control instance and readable by the gateway)",
    )
    join_token_ttl_s: float = Field(
        6 * 3600, gt=0, description="join tokens expire this long after the conversation is created"
    )
    key_cache_s: float = Field(5.0, ge=0, description="how long a verified API key is cached in memory")


class Limits(Settings):
    """Request limits; violations are INVALID_ARGUMENT."""

    max_name_chars: int = Field(200, gt=0)
    max_prompt_chars: int = Field(32_000, gt=0, description="persona system prompt")
    max_context_chars: int = Field(32_000, gt=0, description="persona context, conversational context, context ops")
    max_greeting_chars: int = Field(2_000, gt=0)
    max_text_chars: int = Field(4_000, gt=0, description="echo / respond text")
    max_tools: int = Field(32, ge=0)
    max_tool_json_chars: int = Field(16_000, gt=0)
    max_url_chars: int = Field(2_048, gt=0)
    max_photo_bytes: int = Field(12 * 1024 * 1024, gt=0)
    max_echo_audio_bytes: int = Field(2 * 1024 * 1024, gt=0, description="echo audio (PCM) per interaction")
    max_page_size: int = Field(100, gt=0)
    max_duration_s: float = Field(4 * 3600, gt=0, description="largest max_duration_s accepted")
    max_timeout_s: float = Field(24 * 3600, gt=0, description="largest join / absence timeout accepted")


class ConversationDefaults(Settings):
    """Used where a CreateConversation request leaves a field at 0 / empty."""

    max_duration_s: float = Field(3600, gt=0)
    participant_join_timeout_s: float = Field(300, gt=0)
    participant_absent_timeout_s: float = Field(60, gt=0)
    system_prompt: str = Field(
        "You are a friendly assistant in a video call. Answer in one or two short spoken sentences.",
        description="system prompt of conversations created without a persona",
    )


class WebhookConfig(Settings):
    """Delivery of events to callback URLs."""

    allow_private_callbacks: bool = Field(
        False, description="accept callback URLs on loopback / link-local / private / reserved addresses"
    )
    timeout_s: float = Field(5.0, gt=0, description="per attempt")
    max_attempts: int = Field(6, ge=1, le=30)
    backoff_initial_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(300.0, gt=0)
    backoff_factor: float = Field(2.0, ge=1)
    concurrency: int = Field(8, ge=1, le=256, description="deliveries in flight per control instance")
    poll_s: float = Field(0.2, gt=0, description="how often due deliveries are looked for")
    lease_s: float = Field(60.0, gt=0, description="a claimed delivery is retried after this if its sender died")
    resolve_timeout_s: float = Field(2.0, gt=0, description="DNS lookup of a callback host")


class JobConfig(Settings):
    """Replica build jobs."""

    replica_dir: str = Field(
        "",
        description="the renderer's replica store root, where builds write <replica_id>.npz (uploads wait in "
        "its .uploads/ folder); empty = $PARLEY_REPLICA_DIR or ~/.cache/parley/replicas, as the renderer",
    )
    builder: str = Field(
        "auto",
        description="'auto' = the renderer's ReplicaStore.build; or 'module:function' called as "
        "fn(photo_path, replica_dir, replica_id, progress, **build_options)",
    )
    build_options: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments for the build, e.g. {iterations: 150, target_psnr: 25.0, resolution: 512}",
    )
    workers: int = Field(1, ge=0, le=16, description="builds run at once by this instance (each in a process)")
    nice: int = Field(10, ge=0, le=19, description="niceness of build processes: keeps the API responsive")
    lease_s: float = Field(30.0, gt=0, description="a running job whose worker is silent this long is recovered")
    max_attempts: int = Field(2, ge=1, le=10, description="runs of a job cut short by restarts before it fails")
    timeout_s: float = Field(1800.0, gt=0, description="a build running longer is killed and fails")


class ControlServiceConfig(Settings):
    """Top-level settings of ``services.control``."""

    server: ServerConfig = ServerConfig(port=DEFAULT_PORT, max_message_bytes=16 * 1024 * 1024, max_sessions=256)
    key_prefix: str = Field("parley:", description="prefix of every Redis key (as the session store's)")
    public_url: str = Field(
        "http://127.0.0.1:8080", description="base of conversation URLs: {public_url}/c/{conversation_id}?t=..."
    )
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: Limits = Field(default_factory=Limits)
    defaults: ConversationDefaults = Field(default_factory=ConversationDefaults)
    webhooks: WebhookConfig = Field(default_factory=WebhookConfig)
    jobs: JobConfig = Field(default_factory=JobConfig)
    reaper_interval_s: float = Field(1.0, gt=0, description="how often timeouts and stale jobs are checked")
    dispatch_block_ms: int = Field(500, gt=0, description="XREADGROUP block time of the event dispatcher")
    ended_retention_s: float = Field(
        7 * 24 * 3600, gt=0, description="event / interaction streams of ended conversations expire after this"
    )
    session_ttl_s: int = Field(
        6 * 3600, gt=0, description="expiry of the session-store record created with each conversation"
    )

    @field_validator("key_prefix", mode="before")
    @classmethod
    def _prefix_from_env(cls, value: Any) -> Any:
        """``PARLEY_CONTROL__KEY_PREFIX=app:`` reads as the YAML mapping ``{app: null}``: take it as ``app:``."""
        if isinstance(value, dict) and len(value) == 1 and next(iter(value.values())) is None:
            return f"{next(iter(value))}:"
        return value

    @field_validator("server", mode="before")
    @classmethod
    def _keep_default_port(cls, value: Any) -> Any:
        """A partial ``server`` mapping (e.g. only ``redis_url`` from ``common``) keeps port 50060."""
        if isinstance(value, dict):
            return {"port": DEFAULT_PORT, "max_message_bytes": 16 * 1024 * 1024, "max_sessions": 256, **value}
        return value


def replica_root(config: ControlServiceConfig) -> Path:
    """Where replicas are stored: ``jobs.replica_dir``, else the renderer's default store root."""
    if config.jobs.replica_dir:
        return Path(config.jobs.replica_dir).expanduser().resolve()
    env = os.environ.get("PARLEY_REPLICA_DIR")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "parley" / "replicas").resolve()


def load_control_config(yaml_path: str | None = None, **overrides: Any) -> ControlServiceConfig:
    """Config from ``PARLEY_CONFIG`` / ``yaml_path`` section ``control`` and ``PARLEY_CONTROL__*`` variables."""
    return load_config(ControlServiceConfig, "control", yaml_path, **overrides)
