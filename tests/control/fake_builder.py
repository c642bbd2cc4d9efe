"""Stand-in replica builders for the control tests (``jobs.builder = "tests.control.fake_builder:..."``).

They follow the build contract ``fn(photo_path, replica_dir, replica_id, progress, **options)``; the
renderer's real build runs in test_replica_build_real.py.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def build(photo_path: Path, replica_dir: Path, replica_id: str, progress, **options) -> dict:
    data = Path(photo_path).read_bytes()
    steps = ["detecting the face", "fitting gaussians", "building the rig", "writing the replica"]
    for i, message in enumerate(steps):
        progress(i / len(steps), message)
        time.sleep(float(os.environ.get("PARLEY_TEST_BUILD_STEP_S", "0.1")))
    (Path(replica_dir) / f"{replica_id}.json").write_text(json.dumps({"photo_bytes": len(data), **options}))
    progress(1.0, "done")
    return {"gaussians": 1234, "photo_bytes": len(data), "psnr": 31.5}


def failing_build(photo_path: Path, replica_dir: Path, replica_id: str, progress, **options) -> dict:
    progress(0.1, "detecting the face")
    raise ValueError("no face found in the photo")
