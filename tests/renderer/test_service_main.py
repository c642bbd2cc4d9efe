"""``python -m services.renderer`` as a process, and the renderer config section."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from services.renderer.config import DEFAULT_PORT, load_renderer_config

ROOT = Path(__file__).resolve().parents[2]


def test_config_defaults_env_and_validation(tmp_path):
    config = load_renderer_config(yaml_path="", environ={})
    assert config.server.port == DEFAULT_PORT == 50055
    assert (config.backend, config.size, config.fps, config.scheduler) == ("cpu", 256, 30, "auto")
    yaml_file = tmp_path / "parley.yaml"
    yaml_file.write_text("common:\n  server:\n    redis_url: redis://r:1/0\nrenderer:\n  size: 512\n")
    config = load_renderer_config(yaml_path=yaml_file, environ={
        "PARLEY_RENDERER__BACKEND": "gsplat", "PARLEY_RENDERER__DRIVING__LEAD_MS": "20"})
    assert config.size == 512 and config.backend == "gsplat" and config.driving.lead_ms == 20
    assert config.server.port == DEFAULT_PORT and config.server.redis_url == "redis://r:1/0"
    for bad in ({"backend": "opengl"}, {"size": 2000}, {"fps": 0}, {"min_size": 512, "max_size": 256},
                {"driving": {"energy_weight": 2}}):
        with pytest.raises(ValidationError):
            load_renderer_config(yaml_path="", environ={}, **bad)


@pytest.mark.models
def test_module_entry_point_serves_and_drains(redis_url, replica_store, astronaut_replica):
    env = {
        **os.environ,
        "PARLEY_RENDERER__SERVER__PORT": "0",
        "PARLEY_RENDERER__SERVER__METRICS_PORT": "0",
        "PARLEY_RENDERER__SERVER__REDIS_URL": redis_url,
        "PARLEY_RENDERER__REPLICA_DIR": str(replica_store.root),
        "PARLEY_RENDERER__SIZE": "128",
    }
    proc = subprocess.Popen([sys.executable, "-m", "services.renderer"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        ready = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and ready is None:
            line = proc.stdout.readline()
            if not line:
                break
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("event") == "ready":
                ready = msg
        assert ready and ready["service"] == "renderer" and ready["port"] > 0
        with grpc.insecure_channel(f"127.0.0.1:{ready['port']}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="parley.v1.Renderer"), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
