"""The face renderer API: one replica at one size, controls in, RGB frames out.

>>> from services.renderer.face import FaceRenderer, load_default_replica
>>> renderer = FaceRenderer(load_default_replica(), size=512, backend="cpu")
>>> frame = renderer.render(Controls(jaw_open=0.6))        # (512, 512, 3) uint8 RGB

Backends: ``cpu`` (default; Parley's cached tile rasterizer, one core), ``cpu-full`` (no caching: the
reference), ``torch`` (slow; a cross-check), ``gsplat`` (CUDA; batches many sessions in one call).
A ``FaceRenderer`` keeps per-stream state (the cached frame): use one per session, from one thread
at a time. The replica itself is immutable and may be shared.
"""

from __future__ import annotations

import threading

import numpy as np

from services.renderer.controls import Controls
from services.renderer.raster.base import get_rasterizer_class
from services.renderer.replica import Replica, ReplicaStore, load_default_replica

__all__ = ["FaceRenderer", "Controls", "Replica", "ReplicaStore", "load_default_replica"]


class FaceRenderer:
    def __init__(self, replica: Replica, size: int = 512, backend: str = "cpu") -> None:
        self.replica = replica
        self.size = size
        self.backend = backend
        self._impl = get_rasterizer_class(backend)(replica, size)
        self._lock = threading.Lock()

    def render(self, controls: Controls) -> np.ndarray:
        """(size, size, 3) uint8 RGB frame for ``controls`` (values outside their ranges are clamped)."""
        with self._lock:
            return self._impl.render(controls)

    @staticmethod
    def render_batch(items: list[tuple[FaceRenderer, Controls]]) -> list[np.ndarray]:
        """Render many (renderer, controls) pairs; same-backend items are batched (one GPU call for gsplat)."""
        out: list[np.ndarray | None] = [None] * len(items)
        groups: dict[type, list[int]] = {}
        for i, (renderer, _) in enumerate(items):
            groups.setdefault(type(renderer._impl), []).append(i)
        for cls, idxs in groups.items():
            frames = cls.render_batch([(items[i][0]._impl, items[i][1]) for i in idxs])
            for i, frame in zip(idxs, frames, strict=True):
                out[i] = frame
        return out  # type: ignore[return-value]
