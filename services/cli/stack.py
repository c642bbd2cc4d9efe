"""Start Redis and every stage service as local processes on loopback, check health, stop cleanly.

``parley up`` uses this; so do the end-to-end tests and the benchmarks. The running stack is recorded
in ``<run_dir>/stack.json`` so ``parley converse`` and ``parley down`` can find it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parley.redis_server import RedisProcess, free_port

log = logging.getLogger("parley.stack")

VOICE_SERVICES = ("turn", "asr", "llm", "tts")
"""The stage services one spoken turn needs."""
SERVICES = (*VOICE_SERVICES, "renderer", "control", "gateway")
"""Everything ``parley up`` starts."""
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class StackInfo:
    """Where a running stack's parts listen."""

    redis_url: str
    endpoints: dict[str, str]
    metrics: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)


def check_health(address: str, timeout_s: float = 2.0) -> bool:
    """True when the gRPC health service at ``address`` reports SERVING."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def discover(run_dir: str | Path = ".parley") -> StackInfo | None:
    """The stack recorded in ``run_dir`` if every service in it answers SERVING, else None."""
    path = Path(run_dir) / "stack.json"
    if not path.exists():
        return None
    try:
        info = StackInfo(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None
    if all(check_health(addr, 1.0) for addr in info.endpoints.values()):
        return info
    return None


class Stack:
    """Redis + stage service processes. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        run_dir: str | Path = ".parley",
        services: tuple[str, ...] = SERVICES,
        redis_url: str | None = None,
        config_path: str | None = None,
        host: str = "127.0.0.1",
        extra_env: dict[str, str] | None = None,
        http_port: int | None = 8080,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.services = services
        self.redis_url = redis_url
        self.config_path = config_path
        self.host = host
        self.extra_env = extra_env or {}
        self.http_port = http_port  # the gateway's web port (None = a free one)
        self.redis: RedisProcess | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.info: StackInfo | None = None

    def __enter__(self) -> StackInfo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 240.0) -> StackInfo:
        """Start everything and wait until each service reports SERVING."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.redis_url is None:
            self.redis = RedisProcess(log_path=self.run_dir / "redis.log").start()
            self.redis_url = self.redis.url
        info = StackInfo(redis_url=self.redis_url, endpoints={}, metrics={})
        if "gateway" in self.services:
            info.urls["gateway"] = f"http://{self.host}:{self.http_port or free_port(self.host)}"
        for name in self.services:
            port, metrics_port = free_port(self.host), free_port(self.host)
            pythonpath = [str(ROOT), str(ROOT / "libs"), os.environ.get("PYTHONPATH", "")]
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(p for p in pythonpath if p),
                "PARLEY_COMMON__SERVER__REDIS_URL": self.redis_url,
                f"PARLEY_{name.upper()}__SERVER__HOST": self.host,
                f"PARLEY_{name.upper()}__SERVER__PORT": str(port),
                f"PARLEY_{name.upper()}__SERVER__METRICS_PORT": str(metrics_port),
                **self._wiring(name, info),
                **self.extra_env,
            }
            if self.config_path:
                env["PARLEY_CONFIG"] = str(self.config_path)
            log_file = open(self.run_dir / f"{name}.log", "ab")  # noqa: SIM115
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"], cwd=ROOT, env=env,
                stdout=log_file, stderr=subprocess.STDOUT,
            )
            info.endpoints[name] = f"{self.host}:{port}"
            info.metrics[name] = f"http://{self.host}:{metrics_port}/metrics"
            info.pids[name] = self.procs[name].pid
        info.pids["owner"] = os.getpid()
        self.info = info
        try:
            self._wait_healthy(timeout_s)
        except Exception:
            self.stop()
            raise
        (self.run_dir / "stack.json").write_text(json.dumps(asdict(info), indent=2))
        return info

    def _wiring(self, name: str, info: StackInfo) -> dict[str, str]:
        """Control's conversation URLs point at the gateway; the gateway finds the stages and the renderer.
        Services start in SERVICES order, so the endpoints the gateway needs are known by then."""
        if name == "renderer":
            # On one shared box, video frames may drop under load; turn-taking and ASR must not wait.
            return {"PARLEY_RENDERER__SERVER__NICE": "10"}
        gateway = info.urls.get("gateway")
        if name == "control" and gateway:
            return {"PARLEY_CONTROL__PUBLIC_URL": gateway}
        if name != "gateway":
            return {}
        env = {"PARLEY_GATEWAY__HTTP__HOST": self.host, "PARLEY_GATEWAY__HTTP__PORT": gateway.rsplit(":", 1)[1],
               "PARLEY_GATEWAY__RENDERER__ADDRESS": info.endpoints.get("renderer", "")}
        if self.host in ("127.0.0.1", "localhost"):
            env["PARLEY_GATEWAY__WEBRTC__HOST_CANDIDATES"] = "[127.0.0.1]"
        for stage in VOICE_SERVICES:
            if stage in info.endpoints:
                env[f"PARLEY_GATEWAY__ORCHESTRATOR__ENDPOINTS__{stage.upper()}"] = info.endpoints[stage]
        return env

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = dict(self.info.endpoints)
        while pending:
            for name, address in list(pending.items()):
                proc = self.procs[name]
                if proc.poll() is not None:
                    tail = (self.run_dir / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"service {name} exited with {proc.returncode}:\n{tail}")
                if check_health(address, 1.0):
                    del pending[name]
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"services not healthy after {timeout_s:.0f} s: {', '.join(pending)}")
            if pending:
                time.sleep(0.2)

    def stop(self, timeout_s: float = 15.0) -> dict[str, int | None]:
        """SIGTERM every service (they drain), kill stragglers, stop Redis; returns exit codes."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + timeout_s
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        self.procs.clear()
        if self.redis:
            self.redis.stop()
            self.redis = None
        (self.run_dir / "stack.json").unlink(missing_ok=True)
        return codes


def stop_recorded(run_dir: str | Path = ".parley") -> bool:
    """Stop a stack started by another ``parley up`` (from its stack.json pids)."""
    path = Path(run_dir) / "stack.json"
    if not path.exists():
        return False
    info = StackInfo(**json.loads(path.read_text()))
    owner = info.pids.get("owner")
    if owner is None or owner == os.getpid():
        return False
    try:
        os.kill(owner, signal.SIGTERM)  # the owner drains its services and stops Redis
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        return False
    return True
