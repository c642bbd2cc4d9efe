"""ASR config: defaults, YAML section, environment overrides, validation."""

from __future__ import annotations

import pydantic
import pytest

from parley.config import load_config
from services.asr.config import AsrServiceConfig


def test_defaults_are_the_cpu_profile() -> None:
    cfg = load_config(AsrServiceConfig, "asr", yaml_path="", environ={})
    assert cfg.server.port == 50052
    assert (cfg.backend, cfg.device, cfg.compute_type, cfg.beam_size, cfg.cpu_threads) == (
        "faster_whisper",
        "cpu",
        "int8",
        1,
        2,
    )
    assert cfg.word_timestamps and cfg.max_utterance_s == 30.0 and cfg.partial_interval_ms == 700


def test_yaml_and_environment(tmp_path) -> None:
    path = tmp_path / "parley.yaml"
    path.write_text(
        "common:\n  server: {redis_url: 'redis://r:6379/1'}\n"
        "asr:\n  device: cuda\n  compute_type: float16\n  model_path: /models/large-v3-turbo\n"
        "  remote: {base_url: 'http://whisper:8000/v1'}\n"
    )
    env = {"PARLEY_ASR__BEAM_SIZE": "5", "PARLEY_ASR__REMOTE__API_KEY": "sk-1", "PARLEY_ASR__SERVER__PORT": "6000"}
    cfg = load_config(AsrServiceConfig, "asr", yaml_path=path, environ=env)
    assert (cfg.device, cfg.compute_type, cfg.model_path, cfg.beam_size) == (
        "cuda",
        "float16",
        "/models/large-v3-turbo",
        5,
    )
    assert cfg.remote.base_url == "http://whisper:8000/v1" and cfg.remote.api_key == "sk-1"
    assert cfg.server.port == 6000 and cfg.server.redis_url == "redis://r:6379/1"


def test_bad_values_are_rejected() -> None:
    with pytest.raises(pydantic.ValidationError):
        AsrServiceConfig(backend="nope")
    with pytest.raises(pydantic.ValidationError):
        AsrServiceConfig(beam_size=0)
    with pytest.raises(pydantic.ValidationError):
        AsrServiceConfig(unknown_key=1)
