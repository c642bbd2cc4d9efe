"""``python -m services.control.worker --job J ...``: run one replica build job (started by JobSupervisor).

The builder is ``jobs.builder``: ``auto`` (the renderer's ``ReplicaStore.build``, see
:mod:`services.control.renderer_builder`) or a ``module:function`` called as
``fn(photo_path, replica_dir, replica_id, progress, **build_options)``. It writes the replica under
``replica_dir`` named by ``replica_id`` (the renderer: ``<replica_id>.npz``), reports
``progress(fraction 0..1, message)``, and returns something whose scalar fields (a mapping, a dataclass
or an object) become the replica's ``info``. The worker writes progress to the job hash and its
progress stream, marks the replica ready or failed, and exits when its parent (the control service)
goes away.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import logging
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from parley.errors import ParleyError
from services.control.jobs import remove_replica_files

log = logging.getLogger("parley.control.worker")

Progress = Callable[[float, str], None]


class BuilderUnavailable(RuntimeError):
    pass


def load_builder(spec: str) -> Callable[..., Any]:
    """The build function named by ``spec`` (``auto`` = the renderer's replica store)."""
    if spec == "auto":
        try:
            from services.control.renderer_builder import build
        except ImportError as exc:
            raise BuilderUnavailable(f"the renderer's replica build is not installed here ({exc})") from exc
        return build
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise BuilderUnavailable(f"jobs.builder {spec!r} must be 'auto' or 'module:function'")
    return getattr(importlib.import_module(module_name), attr)


def summarise(result: Any) -> dict[str, str]:
    """Scalar fields of a builder's result, as strings (the replica's ``info``)."""
    if result is None:
        return {}
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        items = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    elif isinstance(result, dict):
        items = dict(result)
    else:
        items = {k: v for k, v in vars(result).items() if not k.startswith("_")} if hasattr(result, "__dict__") else {}
    out = {}
    for key, value in items.items():
        if isinstance(value, (str, int, float, bool)) and not (isinstance(value, float) and not math.isfinite(value)):
            out[str(key)] = str(value)[:500]
    return dict(list(out.items())[:50])


class JobWriter:
    """Progress and outcome of one job, written to Redis (sync client)."""

    def __init__(self, client: redis.Redis, prefix: str, job_id: str) -> None:
        self.r = client
        self.p = prefix
        self.job_id = job_id
        self.job_key = f"{prefix}control:job:{job_id}"
        self.stream_key = f"{self.job_key}:progress"
        self._last = (-1.0, "", 0.0)

    def event(self, **fields: str) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.job_key, mapping=fields)
        pipe.xadd(self.stream_key, fields, maxlen=1000, approximate=True)
        pipe.execute()

    def progress(self, fraction: float, message: str = "") -> None:
        try:
            fraction = float(fraction)
        except (TypeError, ValueError):
            fraction = 0.0
        fraction = min(1.0, max(0.0, fraction if math.isfinite(fraction) else 0.0))
        fraction = max(fraction, self._last[0])  # never goes back
        message = str(message)[:300]
        now = time.monotonic()
        # at most ~20 updates a second, but always when the message changes
        if message == self._last[1] and now - self._last[2] < 0.05 and fraction < 1.0:
            return
        self._last = (fraction, message, now)
        self.event(status="running", progress=repr(round(fraction, 4)), message=message)


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(3)  # the control service died: the job is requeued by lease expiry


def run_job(client: redis.Redis, prefix: str, job_id: str, builder_spec: str,
            options: dict[str, Any] | None = None) -> int:
    writer = JobWriter(client, prefix, job_id)
    job = {k.decode(): v.decode() for k, v in client.hgetall(writer.job_key).items()}
    if not job or job.get("status") in ("succeeded", "failed"):
        return 0
    replica_id = job.get("resource_id", "")
    replica_key = f"{prefix}control:replica:{replica_id}"
    replica_dir = (client.hget(replica_key, "path") or b"").decode()
    photo = Path(job.get("input", ""))

    def finish(status: str, error: str = "", info: dict[str, str] | None = None) -> None:
        now = repr(time.time())
        pipe = client.pipeline(transaction=True)
        fields = {"status": status, "finished_at": now, "error": error,
                  "message": "done" if status == "succeeded" else "failed"}
        if status == "succeeded":
            fields["progress"] = "1.0"
        pipe.hset(writer.job_key, mapping=fields)
        pipe.xadd(writer.stream_key, fields, maxlen=1000, approximate=True)
        pipe.zrem(f"{prefix}control:jobs:running", job_id)
        pipe.execute()
        if client.exists(replica_key):
            mapping = {"status": "ready" if status == "succeeded" else "failed", "error": error, "updated_at": now}
            if info is not None:
                mapping["info"] = json.dumps(info)
            client.hset(replica_key, mapping=mapping)
        elif status == "succeeded":  # deleted while building: drop what was built
            remove_replica_files(replica_dir, replica_id)

    try:
        build = load_builder(builder_spec)
        if not replica_dir:
            raise RuntimeError("the replica was deleted before its build started")
        if not photo.is_file():
            raise FileNotFoundError("the uploaded photo is gone (was the replica deleted?)")
        remove_replica_files(replica_dir, replica_id)  # leftovers of a run cut short by a restart
        Path(replica_dir).mkdir(parents=True, exist_ok=True)
        writer.progress(0.0, "starting the build")
        result = build(photo, Path(replica_dir), replica_id, writer.progress, **(options or {}))
        finish("succeeded", info=summarise(result))
        with contextlib.suppress(OSError):
            photo.unlink()
        return 0
    except Exception as exc:  # every failure becomes the job's error
        if isinstance(exc, ParleyError):  # e.g. the renderer's InvalidInput("no face found ...")
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        log.error("build failed: %s\n%s", message, traceback.format_exc())
        finish("failed", error=message[:1000])
        remove_replica_files(replica_dir, replica_id)
        with contextlib.suppress(OSError):
            photo.unlink()
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.control.worker")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", default="parley:")
    parser.add_argument("--job", required=True)
    parser.add_argument("--builder", default="auto")
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("--options", default="{}", help="build options as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s worker %(message)s")
    if args.nice:
        with contextlib.suppress(OSError):
            os.nice(args.nice)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    client = redis.Redis.from_url(args.redis_url)
    try:
        return run_job(client, args.prefix, args.job, args.builder, json.loads(args.options))
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
