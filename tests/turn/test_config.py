"""The turn service's typed config: defaults, YAML, environment, per-stream overrides."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from parley.errors import InvalidInput
from parley.v1 import turn_pb2
from services.turn.config import DetectorConfig, TurnServiceConfig, load_turn_config
from services.turn.server import resolve_params


def test_defaults_match_the_proto_comments() -> None:
    config = load_turn_config(environ={})
    d = config.detector
    assert (d.vad_threshold, d.min_speech_ms, d.vad_stop_ms, d.end_of_turn_threshold, d.silence_timeout_ms) == (
        0.5,
        120,
        160,
        0.5,
        1200,
    )
    assert config.server.port == 50051
    assert config.vad.backend == "silero" and config.end_of_turn.backend == "smart_turn"
    assert config.vad.providers == ["CPUExecutionProvider"]


def test_yaml_and_env(tmp_path) -> None:
    path = tmp_path / "parley.yaml"
    path.write_text(
        "common:\n  server: {redis_url: 'redis://cache:6379/1'}\n"
        "turn:\n  detector: {silence_timeout_ms: 1500}\n  end_of_turn: {workers: 3}\n"
        "asr:\n  something: else\n"
    )
    env = {
        "PARLEY_CONFIG": str(path),
        "PARLEY_TURN__END_OF_TURN__BACKEND": "triton",
        "PARLEY_TURN__END_OF_TURN__TRITON__URL": "triton:8001",
        "PARLEY_TURN__END_OF_TURN__PROVIDERS": "[CUDAExecutionProvider, CPUExecutionProvider]",
        "PARLEY_TURN__DETECTOR__VAD_STOP_MS": "200",
    }
    config = load_turn_config(environ=env)
    assert config.server.redis_url == "redis://cache:6379/1"
    assert config.server.port == 50051  # a partial server section keeps the turn service's port
    assert config.detector.silence_timeout_ms == 1500 and config.detector.vad_stop_ms == 200
    assert config.end_of_turn.workers == 3 and config.end_of_turn.backend == "triton"
    assert config.end_of_turn.triton.url == "triton:8001"
    assert config.end_of_turn.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValidationError):
        load_turn_config(environ={"PARLEY_TURN__END_OF_TURN__BACKEND": "magic"})
    with pytest.raises(ValidationError):
        TurnServiceConfig(detector={"vad_threshold": 0})
    with pytest.raises(ValidationError, match="vad_stop_ms must not exceed"):
        DetectorConfig(vad_stop_ms=2000, silence_timeout_ms=1000)
    with pytest.raises(ValidationError):
        load_turn_config(environ={"PARLEY_TURN__NO_SUCH_KEY": "1"})


def test_turn_config_overrides_defaults() -> None:
    defaults = DetectorConfig()
    assert resolve_params(defaults, turn_pb2.TurnConfig()).vad_stop_ms == 160
    params = resolve_params(defaults, turn_pb2.TurnConfig(vad_threshold=0.7, silence_timeout_ms=2000))
    assert params.vad_threshold == pytest.approx(0.7) and params.silence_timeout_ms == 2000
    assert params.min_speech_ms == 120 and params.end_of_turn_threshold == 0.5
    with pytest.raises(InvalidInput, match="silence_timeout_ms"):
        resolve_params(defaults, turn_pb2.TurnConfig(vad_stop_ms=500, silence_timeout_ms=300))
