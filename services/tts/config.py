"""Typed configuration of the TTS service (config section ``tts``).

Every key can be set in the YAML file named by ``PARLEY_CONFIG`` (section ``tts:``) or by environment,
e.g. ``PARLEY_TTS__BACKEND=openai``, ``PARLEY_TTS__OPENAI__BASE_URL=http://kokoro:8880/v1``,
``PARLEY_TTS__SPEED=1.1`` or ``PARLEY_TTS__CHUNKER__FIRST_MAX_WORDS=8``.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, model_validator

from parley.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from parley.config import ServerConfig, Settings, load_config

DEFAULT_PORT = 50054


class TtsServerConfig(ServerConfig):
    """ServerConfig whose default port is the TTS service's (50054).

    A subclass rather than ``ServerConfig(port=50054)`` as the field default, so that a partial
    ``server:`` mapping (e.g. only ``common.server.redis_url``) keeps port 50054.
    """

    port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="gRPC port; 0 picks a free port")


class ChunkerConfig(Settings):
    """How streamed text is cut into clauses (see :mod:`services.tts.chunker`)."""

    first_max_words: int = Field(
        12,
        ge=1,
        le=200,
        description="the first clause is cut after this many words even without punctuation (~20 LLM tokens)",
    )
    first_min_words: int = Field(1, ge=1, le=50, description="words needed before clause punctuation ends clause 1")
    min_clause_words: int = Field(4, ge=1, le=100, description="words needed before , ; : — end a later clause")
    max_clause_words: int = Field(40, ge=2, le=400, description="a later clause is cut after this many words")
    max_clause_chars: int = Field(400, ge=20, le=5000, description="hard cap on one clause's characters")

    @model_validator(mode="after")
    def _ordered(self) -> ChunkerConfig:
        if self.first_min_words > self.first_max_words:
            raise ValueError("first_min_words must not exceed first_max_words")
        if self.min_clause_words > self.max_clause_words:
            raise ValueError("min_clause_words must not exceed max_clause_words")
        return self


class HibariConfig(Settings):
    """The CPU default backend: hibari-tts (ONNX, 24 kHz) with duration-predictor timings."""

    voices: list[str] = Field(
        default_factory=lambda: ["heart"],
        description="voices loaded at start-up; each must be bundled or already in the hibari cache "
        "(HIBARI_HOME) - nothing is downloaded. Requests for other voices get INVALID_ARGUMENT",
    )
    model_path: str = Field("", description="ONNX file overriding the voice's own model (same graph)")
    threads: int = Field(1, ge=1, le=16, description="onnxruntime intra-op threads per synthesis")
    duration_tensor: str = Field(
        "/Cast_32_output_0",
        description="graph tensor holding the per-phoneme durations (int64 [L], units of 2 vocoder hops); "
        "exposed as an extra model output",
    )
    lead_ms: float = Field(
        50.0,
        ge=0,
        le=200,
        description="the vocoder's audio leads its aligned phoneme frames by about this much at speed 1 "
        "(measured on sibilants); timings are shifted earlier by lead_ms / speed",
    )
    snap_silence: bool = Field(True, description="pull word edges next to pauses in to where the audio goes quiet")
    max_lead_silence_ms: float = Field(60.0, ge=0, le=2000, description="leading silence kept per clause")
    max_tail_silence_ms: float = Field(300.0, ge=0, le=5000, description="trailing silence kept per clause")
    seed: int | None = Field(7, description="noise seed (repeatable audio); null = random per clause")


class OpenAIConfig(Settings):
    """Any OpenAI-compatible ``POST {base_url}/audio/speech`` endpoint (no timings)."""

    base_url: str = Field("http://127.0.0.1:8880/v1", description="API root, e.g. http://kokoro:8880/v1")
    api_key: str = Field("", description="bearer token; empty sends no Authorization header")
    model: str = Field("tts-1", description="model name sent in the request")
    voice: str = Field("alloy", description="default voice")
    voices: list[str] = Field(
        default_factory=list, description="voices a stream may ask for; empty = any non-empty name"
    )
    response_format: Literal["pcm", "wav"] = Field("pcm", description="pcm = raw s16le mono; wav = PCM WAV")
    pcm_sample_rate: int = Field(24000, ge=MIN_SAMPLE_RATE, le=MAX_SAMPLE_RATE, description="rate of raw pcm")
    timeout_s: float = Field(30.0, gt=0, description="deadline of one clause request")
    send_speed: bool = Field(True, description="send the stream's speed in the request")


class TtsServiceConfig(Settings):
    """Everything the TTS service reads at start-up."""

    server: TtsServerConfig = Field(default_factory=TtsServerConfig)
    backend: Literal["hibari", "openai"] = Field("hibari", description="synthesis backend")
    voice: str = Field("", description="default voice; empty = the backend's default")
    speed: float = Field(1.0, ge=0.25, le=4.0, description="default speaking rate (1.0 = natural)")
    min_speed: float = Field(0.5, gt=0, description="lowest speed a stream may ask for")
    max_speed: float = Field(2.0, gt=0, description="highest speed a stream may ask for")
    sample_rate: int = Field(
        0, ge=0, le=MAX_SAMPLE_RATE, description="default output rate in Hz; 0 = the backend's native rate"
    )
    frame_ms: int = Field(
        200,
        ge=0,
        le=5000,
        description="audio per SpeechAudio event; 0 = one event per clause. Timings ride on a clause's first event",
    )
    max_text_chars: int = Field(20_000, gt=0, description="most text one stream may send (INVALID_ARGUMENT above)")
    synthesis_threads: int = Field(2, ge=1, le=64, description="worker threads shared by all streams")
    warmup: bool = Field(True, description="synthesize once at start-up, before reporting SERVING")
    chunker: ChunkerConfig = Field(default_factory=ChunkerConfig)
    hibari: HibariConfig = Field(default_factory=HibariConfig)
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)

    @model_validator(mode="after")
    def _check(self) -> TtsServiceConfig:
        if self.min_speed > self.max_speed:
            raise ValueError("min_speed must not exceed max_speed")
        if not self.min_speed <= self.speed <= self.max_speed:
            raise ValueError(f"speed {self.speed} is outside min_speed..max_speed")
        if self.sample_rate and self.sample_rate < MIN_SAMPLE_RATE:
            raise ValueError(f"sample_rate must be 0 or {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}")
        return self


def load_tts_config(
    yaml_path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None, **overrides: Any
) -> TtsServiceConfig:
    """The ``tts`` section from defaults, YAML (``common`` + ``tts``) and ``PARLEY_TTS__*`` env."""
    return load_config(TtsServiceConfig, "tts", yaml_path=yaml_path, environ=environ, **overrides)
