"""Typed configuration from defaults, an optional YAML file and environment variables.

Precedence (lowest to highest): field defaults < YAML file < environment.

* YAML: the path in ``PARLEY_CONFIG`` (or passed explicitly). The file may hold one top-level section
  per service (``turn:``, ``asr:`` ...) plus a ``common:`` section merged into every service.
* Environment: ``PARLEY_<SECTION>__<FIELD>`` (nested fields with further ``__``), e.g.
  ``PARLEY_ASR__BACKEND=faster_whisper`` or ``PARLEY_LLM__OPENAI__BASE_URL=http://vllm:8000/v1``.
  Values are parsed as YAML scalars, so ``true``, ``3`` and ``[a, b]`` work.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field

ENV_PREFIX = "PARLEY_"

T = TypeVar("T", bound="BaseModel")


class Settings(BaseModel):
    """Base for every typed config: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServerConfig(Settings):
    """How a stage service listens and drains."""

    host: str = Field("127.0.0.1", description="gRPC bind address")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free port")
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics port; 0 picks a free one")
    drain_notice_seconds: float = Field(
        0.5, ge=0, description="on SIGTERM, report NOT_SERVING this long before refusing new streams"
    )
    drain_seconds: float = Field(5.0, ge=0, description="grace period for in-flight streams on SIGTERM")
    max_message_bytes: int = Field(4 * 1024 * 1024, gt=0, description="largest accepted gRPC message")
    max_sessions: int = Field(64, gt=0, description="concurrent streams accepted before RESOURCE_EXHAUSTED")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="session store")
    check_sessions: bool = Field(True, description="reject streams whose session id is not in the store")
    nice: int = Field(
        0, ge=0, le=19, description="raise the process's niceness at start (lower CPU priority on a shared box)"
    )


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_overrides(section: str, environ: dict[str, str]) -> dict[str, Any]:
    prefix = f"{ENV_PREFIX}{section.upper()}__"
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(prefix):
            continue
        path = [p.lower() for p in name[len(prefix):].split("__") if p]
        if not path:
            continue
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return out


def read_yaml(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The YAML document at ``path`` (``{}`` when path is empty)."""
    if not path:
        return {}
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def load_config(
    model: type[T],
    section: str,
    yaml_path: str | os.PathLike[str] | None = None,
    environ: dict[str, str] | None = None,
    **overrides: Any,
) -> T:
    """Build ``model`` for ``section`` from YAML (``common`` then ``section``), env, then ``overrides``."""
    environ = dict(os.environ if environ is None else environ)
    doc = read_yaml(yaml_path if yaml_path is not None else environ.get(f"{ENV_PREFIX}CONFIG"))
    # Start from the model's own defaults so a partial nested override keeps the other nested defaults.
    data: dict[str, Any] = model.model_construct().model_dump()
    # `common` may carry keys a section does not define (e.g. server.* for the orchestrator): keep known ones.
    common = _deep_merge(doc.get("common") or {}, _env_overrides("common", environ))
    data = _deep_merge(data, {k: v for k, v in common.items() if k in model.model_fields})
    data = _deep_merge(data, doc.get(section) or {})
    data = _deep_merge(data, _env_overrides(section, environ))
    data = _deep_merge(data, overrides)
    return model.model_validate(data)
