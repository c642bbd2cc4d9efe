"""Replica build jobs: a Redis queue, a supervisor per control instance, one worker process per build.

* ``CreateReplica`` writes the replica (``building``) and the job (``queued``) and RPUSHes the job id
  on ``{p}control:jobs:queue`` (see :mod:`services.control.store`).
* Each control instance runs a :class:`JobSupervisor`: it atomically pops a job id and puts it on
  ``{p}control:jobs:running`` with a lease deadline, starts ``python -m services.control.worker`` for it
  (niced, so the API stays responsive), and renews the lease while the process lives.
* The worker runs the builder and writes progress to the job hash and its progress stream.
* A job whose lease ran out (its control instance died) is requeued by whichever instance notices, up
  to ``jobs.max_attempts`` runs, then failed with the reason. A graceful shutdown requeues its jobs at
  once. So a restart never loses a job: it resumes from the start on the next instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from services.control.config import ControlServiceConfig
from services.control.store import JOB_TERMINAL, ControlStore

log = logging.getLogger("parley.control.jobs")

ROOT = Path(__file__).resolve().parents[2]

# Pop a queued job and lease it in one step, so no instance crash can drop it between the two.
_CLAIM = """
local id = redis.call('LPOP', KEYS[1])
if not id then return false end
redis.call('ZADD', KEYS[2], ARGV[1], id)
return id
"""


def job_event(store: ControlStore, pipe: Any, job_id: str, **fields: str) -> None:
    """Queue on ``pipe`` an update of the job hash and one progress-stream entry."""
    pipe.hset(store.k("job", job_id), mapping=fields)
    pipe.xadd(store.k("job", job_id, "progress"), fields, maxlen=1000, approximate=True)


async def fail_job(store: ControlStore, job_id: str, error: str) -> None:
    record = await store.job_record(job_id)
    if not record or record.get("status") in JOB_TERMINAL:
        return
    now = repr(time.time())
    async with store.redis.pipeline(transaction=True) as pipe:
        job_event(store, pipe, job_id, status="failed", error=error, message="failed", finished_at=now)
        replica_key = store.k("replica", record.get("resource_id", ""))
        pipe.zrem(store.k("jobs", "running"), job_id)
        await pipe.execute()
    if await store.redis.exists(replica_key):
        await store.redis.hset(replica_key, mapping={"status": "failed", "error": error, "updated_at": now})
    _remove_input(record)


async def requeue_job(store: ControlStore, job_id: str, message: str) -> None:
    async with store.redis.pipeline(transaction=True) as pipe:
        job_event(store, pipe, job_id, status="queued", progress="0", message=message)
        pipe.lpush(store.k("jobs", "queue"), job_id)
        await pipe.execute()


def _remove_input(record: dict[str, str]) -> None:
    path = record.get("input")
    if path:
        with contextlib.suppress(OSError):
            os.unlink(path)


class JobSupervisor:
    """Runs queued jobs of this instance in worker processes; recovers jobs of dead instances."""

    def __init__(self, store: ControlStore, config: ControlServiceConfig, redis_url: str) -> None:
        self.store = store
        self.config = config
        self.redis_url = redis_url
        self.running: dict[str, asyncio.subprocess.Process] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._claim = store.redis.register_script(_CLAIM)

    async def run(self) -> None:
        """Claim and start jobs while there is capacity (until cancelled)."""
        poll = 0.2
        while not self._stopping:
            try:
                if len(self.running) < self.config.jobs.workers and not self._stopping:
                    job_id = await self._claim(
                        keys=[self.store.k("jobs", "queue"), self.store.k("jobs", "running")],
                        args=[time.time() + self.config.jobs.lease_s],
                    )
                    if job_id:
                        await self._start(job_id)
                        continue
                await self._renew_leases()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job supervisor iteration failed")
            await asyncio.sleep(poll)

    async def _renew_leases(self) -> None:
        if self.running:
            deadline = time.time() + self.config.jobs.lease_s
            await self.store.redis.zadd(self.store.k("jobs", "running"), {j: deadline for j in self.running}, xx=True)

    async def _start(self, job_id: str) -> None:
        record = await self.store.job_record(job_id)
        if not record or record.get("status") in JOB_TERMINAL:
            await self.store.redis.zrem(self.store.k("jobs", "running"), job_id)
            return
        if not await self.store.redis.exists(self.store.k("replica", record.get("resource_id", ""))):
            await fail_job(self.store, job_id, "the replica was deleted before its build started")
            return
        attempts = int(float(record.get("attempts") or 0)) + 1
        async with self.store.redis.pipeline(transaction=True) as pipe:
            job_event(self.store, pipe, job_id, status="running", attempts=str(attempts),
                      started_at=repr(time.time()), message="starting the build", progress="0")
            await pipe.execute()
        cmd = [sys.executable, "-m", "services.control.worker", "--redis-url", self.redis_url,
               "--prefix", self.store.p, "--job", job_id, "--builder", self.config.jobs.builder,
               "--nice", str(self.config.jobs.nice), "--options", json.dumps(self.config.jobs.build_options)]
        pythonpath = [str(ROOT), str(ROOT / "libs"), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in pythonpath if p)}
        proc = await asyncio.create_subprocess_exec(*cmd, cwd=str(ROOT), env=env, stdin=asyncio.subprocess.DEVNULL)
        self.running[job_id] = proc
        log.info("build started", extra={"job_id": job_id, "pid": proc.pid, "attempt": attempts})
        task = asyncio.create_task(self._watch(job_id, proc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, job_id: str, proc: asyncio.subprocess.Process) -> None:
        try:
            try:
                code = await asyncio.wait_for(proc.wait(), self.config.jobs.timeout_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                await fail_job(self.store, job_id, f"the build ran longer than {self.config.jobs.timeout_s:g} s")
                return
            if self._stopping:
                return  # stop() requeues it
            record = await self.store.job_record(job_id)
            if record and record.get("status") not in JOB_TERMINAL:
                await fail_job(self.store, job_id, f"the build process exited with code {code} without a result")
            await self.store.redis.zrem(self.store.k("jobs", "running"), job_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("watching build failed", extra={"job_id": job_id})
        finally:
            if not self._stopping:
                self.running.pop(job_id, None)

    async def recover(self) -> int:
        """Requeue (or fail) running jobs whose lease ran out; returns how many were handled."""
        stale = await self.store.redis.zrangebyscore(self.store.k("jobs", "running"), "-inf", time.time())
        handled = 0
        for job_id in stale:
            if job_id in self.running:
                continue
            if not await self.store.redis.zrem(self.store.k("jobs", "running"), job_id):
                continue  # another instance took it
            handled += 1
            record = await self.store.job_record(job_id)
            if not record or record.get("status") in JOB_TERMINAL:
                continue
            attempts = int(float(record.get("attempts") or 0))
            if attempts >= self.config.jobs.max_attempts:
                await fail_job(self.store, job_id, f"interrupted by a control service restart {attempts} times; "
                                                   "giving up")
            else:
                log.warning("requeueing an interrupted build", extra={"job_id": job_id, "attempts": attempts})
                await requeue_job(self.store, job_id, "requeued: its previous run was interrupted by a restart")
        return handled

    async def stop(self) -> None:
        """Kill this instance's builds and requeue them at once (they restart from scratch elsewhere)."""
        self._stopping = True
        for job_id, proc in list(self.running.items()):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(Exception):
                    await proc.wait()
            with contextlib.suppress(Exception):
                record = await self.store.job_record(job_id)
                if record and record.get("status") not in JOB_TERMINAL:
                    await self.store.redis.zrem(self.store.k("jobs", "running"), job_id)
                    await requeue_job(self.store, job_id, "requeued: the control service shut down during the build")
        self.running.clear()
        for task in list(self._tasks):
            task.cancel()


def remove_replica_files(root: str, replica_id: str) -> None:
    """Delete what a build wrote for ``replica_id`` under the store root: ``<id>.*`` and ``<id>/``."""
    if not root or not replica_id:
        return
    base = Path(root)
    for path in base.glob(f"{replica_id}.*"):
        with contextlib.suppress(OSError):
            path.unlink()
    if (base / replica_id).is_dir():
        shutil.rmtree(base / replica_id, ignore_errors=True)
