"""Renderer fixtures shared by the replica/raster tests and the driving/service tests.

``replica_store`` and ``astronaut_replica`` live in tests/conftest.py (shared by every test folder).
"""

from __future__ import annotations

import numpy as np
import pytest

from services.renderer.controls import Controls


@pytest.fixture(scope="session")
def face_renderer_factory(astronaut_replica):
    """``make(size=256, backend="cpu") -> FaceRenderer`` for the astronaut replica."""
    from services.renderer.face import FaceRenderer

    def make(size: int = 256, backend: str = "cpu") -> FaceRenderer:
        return FaceRenderer(astronaut_replica, size=size, backend=backend)

    return make


@pytest.fixture(scope="session")
def face_metrics():
    """``measure(rgb) -> dict | None``: MediaPipe face-mesh measurements of a rendered frame, in IOD units.

    Keys: ``lip_gap`` (13-14), ``corner_lift`` (mouth corners 61/291 above the lip centre, positive = up),
    ``brow_height`` (brows above the iris line), ``eye_open`` (159-145 + 386-374), ``nose_x`` (px),
    ``iris_x`` (px, right iris relative to its outer corner).
    """
    from services.renderer.replica.landmarks import detect_landmarks

    def measure(rgb: np.ndarray) -> dict | None:
        lm = detect_landmarks(rgb)
        if lm is None:
            return None
        iod = float(np.linalg.norm(lm[468, :2] - lm[473, :2]))
        return {
            "lip_gap": float(np.linalg.norm(lm[13, :2] - lm[14, :2])) / iod,
            "corner_lift": float((lm[13, 1] + lm[14, 1]) / 2 - (lm[61, 1] + lm[291, 1]) / 2) / iod,
            "brow_height": float(np.mean(lm[[468, 473], 1]) - np.mean(lm[[105, 66, 107, 334, 296, 336], 1])) / iod,
            "eye_open": float(np.linalg.norm(lm[159, :2] - lm[145, :2]) + np.linalg.norm(lm[386, :2] - lm[374, :2]))
            / iod,
            "nose_x": float(lm[1, 0]),
            "iris_x": float(lm[468, 0] - lm[33, 0]),
        }

    return measure


def speech_controls(n: int, fps: float = 30.0) -> list[Controls]:
    """The benchmark's deterministic speech-like control track (see ``bench.renderer.speech_track``)."""
    from bench.renderer import speech_track

    return speech_track(n, fps)
