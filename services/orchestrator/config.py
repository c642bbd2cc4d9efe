"""Orchestrator settings: where the stage services are and how a conversation behaves."""

from __future__ import annotations

from pydantic import Field

from parley.config import Settings, load_config


class StageEndpoints(Settings):
    """gRPC addresses (host:port) of the stage services."""

    turn: str = "127.0.0.1:50051"
    asr: str = "127.0.0.1:50052"
    llm: str = "127.0.0.1:50053"
    tts: str = "127.0.0.1:50054"


class OrchestratorConfig(Settings):
    """Per-conversation behaviour. Zero / empty values defer to the stage services' defaults."""

    endpoints: StageEndpoints = StageEndpoints()
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="session store")
    session_ttl_s: int = Field(3600, gt=0, description="idle sessions expire after this")
    persona_prompt: str = Field("", description="system prompt; empty = the LLM service's default persona")
    history_turns: int = Field(6, ge=0, description="earlier user/replica utterances sent to the LLM")
    temperature: float = Field(0.3, ge=0, le=2)
    max_tokens: int = Field(80, gt=0, le=512, description="reply length cap (spoken replies are short)")
    top_p: float = Field(0.0, ge=0, le=1, description="LLM nucleus sampling; 0 = the LLM service's default")
    llm_model: str = Field("", description="model name sent to the LLM service; empty = its default")
    voice: str = Field("", description="TTS voice; empty = the TTS service's default")
    speed: float = Field(0.0, ge=0, le=2, description="TTS speaking rate; 0 = the TTS service's default (1.0)")
    language: str = Field("en", description="ASR language; empty = the ASR service's default")
    end_of_turn_threshold: float = Field(0.0, ge=0, le=1, description="0 = the turn service's default")
    silence_timeout_ms: int = Field(0, ge=0, le=10_000, description="0 = the turn service's default")
    input_sample_rate: int = Field(16_000, description="rate of audio sent to turn/ASR (they resample anyway)")
    frame_ms: int = Field(20, gt=0, le=200, description="size of audio frames sent upstream")
    asr_partials: bool = Field(True, description="ask ASR for partial transcripts while the user speaks")
    barge_in: bool = Field(True, description="user speech during the reply cancels it")
    rpc_timeout_s: float = Field(30.0, gt=0, description="deadline for one reply's LLM and TTS calls")


def load_orchestrator_config(yaml_path: str | None = None, **overrides: object) -> OrchestratorConfig:
    """Config from ``PARLEY_CONFIG`` / ``yaml_path`` section ``orchestrator`` and ``PARLEY_ORCHESTRATOR__*``."""
    return load_config(OrchestratorConfig, "orchestrator", yaml_path, **overrides)
