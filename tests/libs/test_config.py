import pytest
from pydantic import Field, ValidationError

from parley.config import ServerConfig, Settings, load_config


class Backend(Settings):
    base_url: str = ""
    timeout_s: float = 5.0


class DemoConfig(Settings):
    server: ServerConfig = ServerConfig(port=50060)
    backend: str = "cpu"
    threads: int = Field(1, ge=1)
    remote: Backend = Backend()


def test_defaults_without_yaml_or_env():
    cfg = load_config(DemoConfig, "demo", environ={})
    assert cfg.backend == "cpu" and cfg.server.port == 50060 and cfg.remote.timeout_s == 5.0


def test_yaml_then_env_then_overrides(tmp_path):
    path = tmp_path / "parley.yaml"
    path.write_text(
        "common:\n  server:\n    redis_url: redis://r:6379/1\n"
        "demo:\n  backend: gpu\n  threads: 2\n  remote:\n    base_url: http://a\n"
    )
    env = {"PARLEY_DEMO__THREADS": "4", "PARLEY_DEMO__REMOTE__TIMEOUT_S": "2.5", "PARLEY_OTHER__THREADS": "9"}
    cfg = load_config(DemoConfig, "demo", path, environ=env)
    assert cfg.backend == "gpu"
    assert cfg.threads == 4
    assert cfg.remote.base_url == "http://a" and cfg.remote.timeout_s == 2.5
    assert cfg.server.redis_url == "redis://r:6379/1"
    assert cfg.server.port == 50060  # nested default survives a partial nested override
    assert load_config(DemoConfig, "demo", path, environ=env, threads=8).threads == 8


def test_config_path_from_env(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("demo:\n  backend: remote\n")
    assert load_config(DemoConfig, "demo", environ={"PARLEY_CONFIG": str(path)}).backend == "remote"


def test_invalid_values_and_unknown_keys_are_rejected(tmp_path):
    with pytest.raises(ValidationError):
        load_config(DemoConfig, "demo", environ={"PARLEY_DEMO__THREADS": "0"})
    path = tmp_path / "bad.yaml"
    path.write_text("demo:\n  no_such_field: 1\n")
    with pytest.raises(ValidationError):
        load_config(DemoConfig, "demo", path, environ={})
    path.write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(DemoConfig, "demo", path, environ={})
