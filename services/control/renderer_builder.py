"""The ``auto`` replica builder: the renderer's :class:`ReplicaStore` builds ``<replica_id>.npz``.

The control plane's replica ids (``r_`` + 20 hex) are valid store ids, so the renderer loads a replica
by the same id the API returns, from the same root (``jobs.replica_dir`` / ``$PARLEY_REPLICA_DIR``).
Runs inside the build worker process (it imports torch and mediapipe).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.renderer.replica import FORMAT_VERSION, ReplicaStore


def build(photo_path: Path, replica_dir: Path, replica_id: str, progress: Callable[[float, str], None],
          **options: Any) -> dict[str, Any]:
    """Build and save the replica; returns a summary for the replica's ``info``."""
    store = ReplicaStore(replica_dir)
    replica = store.build(Path(photo_path).read_bytes(), replica_id, progress=progress, **options)
    info: dict[str, Any] = {"gaussians": replica.num_gaussians, "format_version": FORMAT_VERSION,
                            "file": str(store.path(replica_id))}
    for key, value in (replica.meta.get("build") or {}).items():
        if isinstance(value, (int, float, str, bool)) and not (isinstance(value, float) and not math.isfinite(value)):
            info[f"build_{key}"] = value
    return info
