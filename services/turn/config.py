"""Typed configuration of the turn service (config section ``turn``).

Every key can be set in the YAML file named by ``PARLEY_CONFIG`` (section ``turn:``) or by environment,
e.g. ``PARLEY_TURN__END_OF_TURN__BACKEND=triton``, ``PARLEY_TURN__END_OF_TURN__TRITON__URL=triton:8001``,
``PARLEY_TURN__VAD__PROVIDERS='[CUDAExecutionProvider, CPUExecutionProvider]'`` or
``PARLEY_TURN__DETECTOR__SILENCE_TIMEOUT_MS=1500``.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, model_validator

from parley.config import ServerConfig, Settings, load_config


class OnnxConfig(Settings):
    """How an ONNX model is run with onnxruntime."""

    model_path: str | None = Field(None, description="ONNX file; empty = the file shipped in the python package")
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="onnxruntime execution providers in priority order, e.g. [CUDAExecutionProvider, "
        "CPUExecutionProvider]; unavailable ones are skipped with a warning",
    )
    intra_op_threads: int = Field(1, ge=0, description="onnxruntime intra-op threads (0 = onnxruntime decides)")


class VadConfig(OnnxConfig):
    """Voice activity detector: gives a speech probability per 32 ms frame (512 samples at 16 kHz)."""

    backend: Literal["silero"] = Field("silero", description="VAD implementation")


class TritonConfig(Settings):
    """A Triton Inference Server that serves the smart-turn ONNX model (see services/turn/triton/)."""

    url: str = Field("127.0.0.1:8001", description="Triton gRPC endpoint host:port")
    model_name: str = Field("smart_turn", description="model name in the Triton model repository")
    model_version: str = Field("", description="model version; empty = Triton's version policy")
    input_name: str = Field("input_features", description="input tensor: FP32 [1, 80, 800] log-mel features")
    output_name: str = Field("logits", description="output tensor: FP32 [1, 1] completion probability")
    timeout_s: float = Field(1.0, gt=0, description="deadline of one inference request")
    startup_timeout_s: float = Field(30.0, ge=0, description="how long start-up waits for the model to be ready")
    ssl: bool = Field(False, description="use TLS for the gRPC channel")


class EndOfTurnConfig(OnnxConfig):
    """End-of-turn model: gives the probability that the user finished, from up to 8 s of audio."""

    backend: Literal["smart_turn", "triton"] = Field(
        "smart_turn", description="smart_turn = local onnxruntime; triton = smart-turn served by Triton"
    )
    workers: int = Field(2, ge=1, description="threads running end-of-turn inference for all sessions")
    triton: TritonConfig = Field(default_factory=TritonConfig)


class DetectorConfig(Settings):
    """Service defaults for the per-stream ``TurnConfig`` (a zero field in TurnConfig takes these)."""

    vad_threshold: float = Field(0.5, gt=0, le=1, description="speech probability threshold")
    vad_negative_offset: float = Field(
        0.15, ge=0, lt=1, description="hysteresis: during speech a frame counts as silence below threshold - this"
    )
    min_speech_ms: int = Field(120, ge=0, le=5000, description="speech shorter than this is ignored")
    vad_stop_ms: int = Field(160, ge=0, le=10_000, description="silence after speech before the end-of-turn model")
    end_of_turn_threshold: float = Field(0.5, gt=0, le=1, description="end-of-turn probability that closes a turn")
    silence_timeout_ms: int = Field(1200, gt=0, le=60_000, description="silence that closes a turn regardless")
    pre_speech_ms: int = Field(500, ge=0, le=8000, description="audio before speech start given to the model")
    speculative_ms: int = Field(
        64,
        ge=0,
        le=10_000,
        description="start the end-of-turn model this long before vad_stop_ms of silence is reached (0 = at "
        "vad_stop_ms); the answer is used only if the silence lasts. Saves the model's run time (~50 ms) of latency",
    )
    model_wait_ms: int = Field(
        200,
        ge=0,
        le=10_000,
        description="frames this far (audio time) past an end-of-turn request wait for its answer, so that "
        "faster-than-real-time streams get the decisions real-time ones get",
    )

    @model_validator(mode="after")
    def _stop_before_timeout(self) -> DetectorConfig:
        if self.vad_stop_ms > self.silence_timeout_ms:
            raise ValueError("vad_stop_ms must not exceed silence_timeout_ms")
        return self


class TurnServerConfig(ServerConfig):
    """ServerConfig whose default port is the turn service's (50051).

    A subclass rather than ``ServerConfig(port=50051)`` as the field default, so that a partial
    ``server:`` mapping (e.g. only ``common.server.redis_url``) keeps port 50051.
    """

    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free port")


class TurnServiceConfig(Settings):
    """Everything the turn service reads at start-up."""

    server: TurnServerConfig = Field(default_factory=TurnServerConfig)
    vad: VadConfig = Field(default_factory=VadConfig)
    end_of_turn: EndOfTurnConfig = Field(default_factory=EndOfTurnConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    warmup: bool = Field(True, description="run each model once at start-up, before reporting SERVING")


def load_turn_config(
    yaml_path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None, **overrides: Any
) -> TurnServiceConfig:
    """The ``turn`` section from defaults, YAML (``common`` + ``turn``) and ``PARLEY_TURN__*`` env."""
    return load_config(TurnServiceConfig, "turn", yaml_path=yaml_path, environ=environ, **overrides)
