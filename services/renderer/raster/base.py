"""The rasterizer interface and the data that flows into it.

A rig (``services.renderer.replica.rig.Rig``) turns :class:`Controls` into :class:`PosedGaussians`
(3D, world units: the portrait square is ``[0, 1]^2``, ``z`` away from the camera). A rasterizer draws
them orthographically into a ``size x size`` RGB image. Conventions shared by every backend (and by
gsplat's ``camera_model="ortho"``): pixel ``(x * size, y * size)``, pixel centres at ``i + 0.5``, the
2D covariance is dilated by ``EPS2D`` px^2, ``alpha = min(0.999, opacity * exp(-q / 2))``, Gaussians
with ``alpha < 1/255`` are skipped, front-to-back compositing stops once transmittance would fall
to 1e-4 (the CPU kernel stops at half a uint8 level, ``T_MIN_CPU``, which changes no output by more than
one level), and the background is black.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from services.renderer.controls import Controls

EPS2D = 0.3
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
# The CPU kernel stops a pixel once what is left could change it by less than half a uint8 level.
T_MIN_CPU = 0.5 / 255.0
TILE = 16


@dataclass
class PosedGaussians:
    """Gaussians in world units after the rig has been applied."""

    means: np.ndarray      # (N, 3) float32
    covs: np.ndarray       # (N, 3, 3) float32
    opacities: np.ndarray  # (N,) float32
    colors: np.ndarray     # (N, 3) float32


@dataclass
class Splats2D:
    """Gaussians projected to pixels at one render size (what a CPU tile kernel consumes)."""

    means: np.ndarray      # (N, 2) float32 pixels
    conics: np.ndarray     # (N, 3) float32: inverse 2D covariance (a, b, c) -> q = a dx^2 + 2 b dx dy + c dy^2
    depths: np.ndarray     # (N,) float32
    opacities: np.ndarray  # (N,) float32
    colors: np.ndarray     # (N, 3) float32
    radii: np.ndarray      # (N,) float32 pixels beyond which alpha < 1/255


def conics_from_cov2d(cov2d: np.ndarray, opacities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Conics (N,3) and cut-off radii (N,) for pixel-unit 2D covariances (N,2,2), dilated by EPS2D."""
    a = cov2d[:, 0, 0] + EPS2D
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1] + EPS2D
    det = np.maximum(a * c - b * b, 1e-12)
    conics = np.stack([c / det, -b / det, a / det], axis=1).astype(np.float32)
    mid = 0.5 * (a + c)
    lam = mid + np.sqrt(np.maximum(mid * mid - det, 0.01))
    # alpha = o * exp(-q/2) >= 1/255  <=>  q <= 2 ln(255 o)
    extent = np.sqrt(2.0 * np.log(np.maximum(opacities * 255.0, 1.0 + 1e-6)))
    radii = (np.minimum(extent, 3.33) * np.sqrt(lam)).astype(np.float32)
    radii[opacities < ALPHA_MIN] = 0.0
    return conics, radii


def project(posed: PosedGaussians, size: int) -> Splats2D:
    """Orthographic projection to a ``size`` x ``size`` image."""
    cov2d = posed.covs[:, :2, :2].astype(np.float64) * float(size * size)
    conics, radii = conics_from_cov2d(cov2d, posed.opacities)
    return Splats2D(
        means=(posed.means[:, :2] * size).astype(np.float32),
        conics=conics,
        depths=posed.means[:, 2].astype(np.float32),
        opacities=posed.opacities.astype(np.float32),
        colors=posed.colors.astype(np.float32),
        radii=radii,
    )


class HeadWarp:
    """Head pose as an image warp, shared by every backend.

    A replica built from one photo has nothing behind its silhouette, so rotating the splats in 3D
    tears them apart at depth steps (hair vs. face). Instead, every backend renders the face with
    the expression controls only and then warps the image: the 2D affine that best matches the 3D
    rotation of the landmarks about the head pivot, blended by the head-weight field (1 on the head,
    fading to 0 over the background), so the background stays put and nothing tears.
    """

    def __init__(self, rig, size: int) -> None:
        from services.renderer.replica.rig import head_weight_at

        self.rig = rig
        self.size = size
        # Maps are computed on a grid 4x coarser (they are smooth) and upsampled.
        self.coarse = max(size // 4, 16)
        yy, xx = np.mgrid[0:self.coarse, 0:self.coarse].astype(np.float32)
        self.px = (xx + 0.5) / self.coarse
        self.py = (yy + 0.5) / self.coarse
        self.field = head_weight_at(np.stack([self.px, self.py], axis=-1), rig.head)
        self.base_x = self.px * size - 0.5
        self.base_y = self.py * size - 0.5
        self.h_size = self.field * size

    @staticmethod
    def active(controls: Controls) -> bool:
        return bool(controls.head_yaw or controls.head_pitch or controls.head_roll)

    def maps(self, controls: Controls) -> tuple[np.ndarray, np.ndarray]:
        """Backward maps (source pixel coordinates, pixel centres at integers as cv2.remap expects)."""
        import cv2

        aff = self.rig.head_affine(controls)
        inv = np.linalg.inv(np.vstack([aff, [0, 0, 1]])).astype(np.float32)
        px, py = self.px, self.py
        # source = x + h(x) * (A^-1 x - x)
        dx = (inv[0, 0] - 1) * px + inv[0, 1] * py + inv[0, 2]
        dy = inv[1, 0] * px + (inv[1, 1] - 1) * py + inv[1, 2]
        map_x = self.base_x + self.h_size * dx
        map_y = self.base_y + self.h_size * dy
        if self.coarse != self.size:
            # Upsample with pixel-centre alignment (cv2.resize maps centres to centres).
            map_x = cv2.resize(map_x, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
            map_y = cv2.resize(map_y, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        return map_x, map_y

    def apply(self, frame: np.ndarray, controls: Controls) -> np.ndarray:
        import cv2

        map_x, map_y = self.maps(controls)
        return cv2.remap(frame, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class Rasterizer(ABC):
    """Draws one replica at one size. Backends: ``cpu`` (cached tiles), ``cpu-full``, ``torch``, ``gsplat``."""

    name: str = "base"

    def __init__(self, replica, size: int) -> None:
        from services.renderer.replica.rig import Rig

        if not isinstance(size, int) or size < 32 or size > 2048:
            from parley.errors import InvalidInput

            raise InvalidInput(f"render size must be an integer in [32, 2048], got {size!r}")
        self.replica = replica
        self.size = size
        self.rig = Rig(replica)
        self.head_warp = HeadWarp(self.rig, size)

    @abstractmethod
    def render(self, controls: Controls) -> np.ndarray:
        """(size, size, 3) uint8 RGB."""

    @classmethod
    def render_batch(cls, items: list[tuple[Rasterizer, Controls]]) -> list[np.ndarray]:
        """Render several (rasterizer, controls) pairs; backends that can batch override this."""
        return [r.render(c) for r, c in items]


def get_rasterizer_class(backend: str) -> type[Rasterizer]:
    from parley.errors import InvalidInput

    if backend in ("cpu", "cpu-full"):
        from services.renderer.raster.cpu import CpuRasterizer, FullCpuRasterizer

        return CpuRasterizer if backend == "cpu" else FullCpuRasterizer
    if backend == "torch":
        from services.renderer.raster.torch_splat import TorchRasterizer

        return TorchRasterizer
    if backend == "gsplat":
        from services.renderer.raster.gsplat_backend import GsplatRasterizer

        return GsplatRasterizer
    raise InvalidInput(f"unknown renderer backend {backend!r}; expected one of cpu, cpu-full, torch, gsplat")
