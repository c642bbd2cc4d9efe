"""TTS config loading and the ``python -m services.tts`` process entry point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.tts.config import DEFAULT_PORT, load_tts_config

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_yaml_and_env(tmp_path):
    cfg = load_tts_config(yaml_path="", environ={})
    assert (cfg.server.port, cfg.backend, cfg.chunker.first_max_words) == (DEFAULT_PORT, "hibari", 12)
    doc = tmp_path / "parley.yaml"
    doc.write_text(
        "common:\n  server:\n    redis_url: redis://r:6379/0\ntts:\n  speed: 1.1\n  chunker:\n    min_clause_words: 3\n"
    )
    env = {"PARLEY_TTS__BACKEND": "openai", "PARLEY_TTS__OPENAI__BASE_URL": "http://kokoro:8880/v1"}
    cfg = load_tts_config(yaml_path=doc, environ=env)
    assert cfg.server.port == DEFAULT_PORT  # a partial server mapping keeps the service's port
    assert cfg.server.redis_url == "redis://r:6379/0"
    assert (cfg.speed, cfg.chunker.min_clause_words) == (1.1, 3)
    assert (cfg.backend, cfg.openai.base_url) == ("openai", "http://kokoro:8880/v1")


@pytest.mark.parametrize(
    "overrides",
    [
        {"speed": 3.0},
        {"min_speed": 2.0, "max_speed": 1.0},
        {"sample_rate": 100},
        {"backend": "espeak"},
        {"chunker": {"first_min_words": 20}},
        {"unknown_key": 1},
    ],
)
def test_invalid_config_is_rejected(overrides):
    with pytest.raises(ValidationError):
        load_tts_config(yaml_path="", environ={}, **overrides)


@pytest.mark.models
def test_module_entry_point_serves_and_drains(redis_url):
    env = {
        **os.environ,
        "PARLEY_CONFIG": "",
        "PARLEY_TTS__SERVER__PORT": "0",
        "PARLEY_TTS__SERVER__REDIS_URL": redis_url,
        "PARLEY_TTS__SERVER__DRAIN_SECONDS": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.tts"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        ready = json.loads(line)
        assert ready["event"] == "ready" and ready["service"] == "tts" and ready["port"] > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
