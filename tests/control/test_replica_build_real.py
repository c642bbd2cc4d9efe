"""Replica jobs running the renderer's real build (MediaPipe landmarks + Gaussian fit) in the worker
process: progress events through WatchJob, a replica file the renderer loads by the API's id, and a
photo without a face failing with the renderer's reason."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from parley.client import AsyncParleyClient, JobFailed
from parley.v1 import control_pb2 as pb
from tests.control.conftest import Control, face_photo, issue_key, make_config, png_photo

try:  # the renderer's build (torch, mediapipe) may be absent from a slim control image
    import services.renderer.replica.build  # noqa: F401
    from services.renderer.replica import ReplicaStore
except ImportError as exc:  # pragma: no cover
    pytest.skip(f"renderer replica build not importable: {exc}", allow_module_level=True)

QUICK = {"iterations": 5, "extra_iterations": 0, "target_psnr": 0.0}


async def _run(tmp_path, redis_url, options, photo: bytes, limit_s: float):
    root = tmp_path / "replicas"
    config = make_config(redis_url, tmp_path, jobs={"builder": "auto", "replica_dir": str(root),
                                                    "build_options": options})
    ctl = await Control(config).start()
    try:
        async with AsyncParleyClient(ctl.address, api_key=await issue_key(config, "acme")) as parley:
            seen: list[tuple[float, str]] = []
            during: list[float] = []
            done = asyncio.Event()

            async def probe() -> None:  # the API stays responsive while the build runs in its process
                while not done.is_set():
                    t1 = time.perf_counter()
                    await parley.list_replicas()
                    during.append((time.perf_counter() - t1) * 1000)
                    await asyncio.sleep(0.25)

            prober = asyncio.create_task(probe())
            t0 = time.perf_counter()
            try:
                replica = await parley.create_replica_and_wait(
                    "Astronaut", photo, progress=lambda f, m: seen.append((f, m)), timeout=limit_s)
                error = None
            except JobFailed as exc:
                replica, error = await parley.get_replica(exc.job.resource_id), exc
            seconds = time.perf_counter() - t0
            done.set()
            await prober
            return root, replica, error, seen, seconds, during
    finally:
        await ctl.stop()


async def test_real_build_from_a_face_photo(tmp_path, redis_url):
    root, replica, error, seen, seconds, during = await _run(tmp_path, redis_url, QUICK, face_photo(), 240)
    assert error is None, error
    assert replica.status == pb.REPLICA_STATUS_READY
    fractions = [f for f, _ in seen]
    messages = {m for _, m in seen}
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("fitting" in m for m in messages) and "finding the face" in messages, messages
    assert int(replica.info["gaussians"]) > 5000
    loaded = ReplicaStore(root).get(replica.replica_id)  # what the renderer will load for this id
    assert loaded.replica_id == replica.replica_id and loaded.num_gaussians == int(replica.info["gaussians"])
    print(f"\nreal quick build: {seconds:.1f} s, {len(seen)} progress updates; ListReplicas during it "
          f"p50 {statistics.median(during):.1f} ms, max {max(during):.1f} ms over {len(during)} calls")
    assert statistics.median(during) < 250  # a shared 2-core machine


async def test_real_build_rejects_a_photo_without_a_face(tmp_path, redis_url):
    root, replica, error, seen, _, _ = await _run(tmp_path, redis_url, QUICK, png_photo(256), 120)
    assert error is not None and replica.status == pb.REPLICA_STATUS_FAILED
    assert "no face found" in replica.error and error.job.error == replica.error
    assert not list(root.glob(f"{replica.replica_id}*"))


@pytest.mark.models
async def test_real_full_build(tmp_path, redis_url):
    """The default (full quality) build, as production runs it."""
    root, replica, error, seen, seconds, during = await _run(tmp_path, redis_url, {}, face_photo(), 600)
    assert error is None and replica.status == pb.REPLICA_STATUS_READY
    print(f"\nreal full build: {seconds:.1f} s, {len(seen)} progress updates; ListReplicas during it "
          f"p50 {statistics.median(during):.1f} ms, max {max(during):.1f} ms; info {dict(replica.info)}")
