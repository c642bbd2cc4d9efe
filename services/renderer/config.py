"""Typed configuration of the renderer service (config section ``renderer``).

Every key can be set in the YAML file named by ``PARLEY_CONFIG`` (section ``renderer:``) or by environment,
e.g. ``PARLEY_RENDERER__BACKEND=gsplat``, ``PARLEY_RENDERER__SIZE=512`` or
``PARLEY_RENDERER__REPLICA_DIR=/data/replicas``.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, model_validator

from parley.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from parley.config import ServerConfig, Settings, load_config

DEFAULT_PORT = 50055


class RendererServerConfig(ServerConfig):
    """ServerConfig whose default port is the renderer's (50055)."""

    port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="gRPC port; 0 picks a free port")


class DrivingConfig(Settings):
    """How speech, emotion and listening drive the face (see :mod:`services.renderer.driving`)."""

    lead_ms: float = Field(0.0, ge=-100, le=100, description="show mouth shapes this much before their audio")
    smooth_ms: float = Field(15.0, ge=0, le=100, description="zero-phase smoothing of the viseme track (sigma)")
    articulation: float = Field(1.3, ge=0.2, le=2.0, description="scale of mouth excursions")
    energy_weight: float = Field(0.8, ge=0, le=1, description="share of the jaw opening that follows loudness")
    emotion_transition_s: float = Field(0.6, ge=0, le=10, description="default emotion change duration")
    min_emotion_transition_s: float = Field(0.35, ge=0.05, le=5, description="shortest emotion change")
    seed: int = Field(0, description="seed of blinks and head motion (per session: seed + session counter)")


class RendererServiceConfig(Settings):
    """Everything the renderer service reads at start-up."""

    server: RendererServerConfig = Field(default_factory=RendererServerConfig)
    backend: Literal["cpu", "gsplat"] = Field(
        "cpu",
        description="rasterizer: cpu renders each session's frames on worker threads; gsplat (CUDA) batches "
        "every session's frame of a tick into one render_batch call",
    )
    scheduler: Literal["auto", "thread", "batch"] = Field(
        "auto",
        description="frame scheduling: thread = each session's frames on worker threads; batch = one shared loop "
        "calling FaceRenderer.render_batch per tick; auto = batch for gsplat, thread for cpu",
    )
    size: int = Field(256, ge=16, le=2048, description="default frame width = height in pixels")
    min_size: int = Field(64, ge=16, le=2048, description="smallest size a stream may ask for")
    max_size: int = Field(1024, ge=16, le=4096, description="largest size a stream may ask for")
    fps: int = Field(30, ge=1, le=60, description="default frame rate")
    max_fps: int = Field(60, ge=1, le=120, description="highest fps a stream may ask for")
    audio_sample_rate: int = Field(
        24_000, ge=MIN_SAMPLE_RATE, le=MAX_SAMPLE_RATE, description="rate of the audio re-emitted with the video"
    )
    replica_dir: str = Field(
        "", description="ReplicaStore root; '' = $PARLEY_REPLICA_DIR, else ~/.cache/parley/replicas"
    )
    default_replica: str = Field("", description="replica used when a stream names none; '' = the built-in default")
    max_sessions: int = Field(4, ge=1, le=1024, description="concurrent render streams (RESOURCE_EXHAUSTED above)")
    render_threads: int = Field(2, ge=1, le=64, description="worker threads rendering frames (cpu backend)")
    batch_window_ms: float = Field(
        4.0, ge=0, le=50, description="gsplat: how long a tick waits for more sessions' frames before rendering"
    )
    max_batch: int = Field(16, ge=1, le=256, description="gsplat: most frames in one render_batch call")
    prebuffer_ms: float = Field(
        100.0, ge=0, le=2000, description="speech audio buffered before an utterance starts playing"
    )
    max_buffer_s: float = Field(120.0, gt=0, le=3600, description="most unplayed speech a stream may queue")
    test_pattern_period_s: float = Field(1.0, gt=0, le=10, description="test pattern: one flash + beep per period")
    warmup: bool = Field(True, description="load the default replica and render one frame before SERVING")
    driving: DrivingConfig = Field(default_factory=DrivingConfig)

    @model_validator(mode="after")
    def _check(self) -> RendererServiceConfig:
        if self.min_size > self.max_size:
            raise ValueError("min_size must not exceed max_size")
        if not self.min_size <= self.size <= self.max_size:
            raise ValueError(f"size {self.size} is outside min_size..max_size")
        if self.fps > self.max_fps:
            raise ValueError("fps must not exceed max_fps")
        return self


def load_renderer_config(
    yaml_path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None, **overrides: Any
) -> RendererServiceConfig:
    """The ``renderer`` section from defaults, YAML (``common`` + ``renderer``) and ``PARLEY_RENDERER__*`` env."""
    return load_config(RendererServiceConfig, "renderer", yaml_path=yaml_path, environ=environ, **overrides)
