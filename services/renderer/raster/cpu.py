"""Parley's CPU rasterizer: tile-based, caching everything the controls do not move.

``cpu`` (:class:`CpuRasterizer`)
    At construction the whole neutral face is rendered once. Per frame the rig poses only the *active*
    Gaussians (those bound to moving rig points, the mouth interior and eyelid sheets). A Gaussian is
    redrawn only if it moved more than ``MOVE_EPS_PX`` (0.15 px) from where the frame buffer shows
    it, or changed shape or opacity; the 16x16 tiles under its old and new footprints are re-rendered
    from *all* Gaussians overlapping them, every other tile is kept from the previous frame. Static
    parts (background, hair, shoulders: rig weights 0) are therefore never re-rendered, and regions
    that move slowly are redrawn only every few frames.
    Head pose is applied last as a smooth image warp (``base.HeadWarp``), so head motion needs no
    re-rendering at all.

``cpu-full`` (:class:`FullCpuRasterizer`)
    Poses every Gaussian and renders every tile, then the same head warp: the reference.
"""

from __future__ import annotations

import numpy as np

from services.renderer.controls import Controls
from services.renderer.raster import kernels
from services.renderer.raster.base import TILE, Rasterizer, Splats2D, conics_from_cov2d, project

MOVE_EPS_PX = 0.15  # a Gaussian whose mean moved less than this (shape and opacity unchanged) is not re-rendered


def _all_tiles(size: int) -> np.ndarray:
    nt = (size + TILE - 1) // TILE
    ty, tx = np.mgrid[0:nt, 0:nt]
    return np.stack([ty.ravel(), tx.ravel()], axis=1)


def render_full(splats: Splats2D, size: int) -> np.ndarray:
    out = np.zeros((size, size, 3), np.uint8)
    order = np.argsort(splats.depths, kind="stable")
    ranges = kernels.tile_ranges(splats.means, splats.radii, size)
    kernels.render_tiles(splats, order, ranges, _all_tiles(size), out)
    return out


class FullCpuRasterizer(Rasterizer):
    """Reference: every Gaussian posed, every tile rendered, then the head warp (no caching)."""

    name = "cpu-full"

    def render(self, controls: Controls) -> np.ndarray:
        controls = controls.clamped()
        frame = render_full(project(self.rig.pose(controls, head=False), self.size), self.size)
        return self.head_warp.apply(frame, controls) if self.head_warp.active(controls) else frame


class CpuRasterizer(Rasterizer):
    """Cached tile renderer (see module docstring)."""

    name = "cpu"

    def __init__(self, replica, size: int = 512) -> None:
        super().__init__(replica, size)
        rig = self.rig
        s0 = project(rig.pose(Controls(), head=False), size)
        self._base = render_full(s0, size)
        self._nt = (size + TILE - 1) // TILE
        self._act = rig.active
        # The drawn state: the splats the current frame buffer shows (active rows change over time).
        self._drawn = Splats2D(s0.means.copy(), s0.conics.copy(), s0.depths.copy(), s0.opacities.copy(),
                               s0.colors, s0.radii.copy())
        self._ranges = [r.copy() for r in kernels.tile_ranges(s0.means, s0.radii, size)]
        self._order = np.argsort(s0.depths, kind="stable")
        self._frame = self._base.copy()
        self.last_dirty_tiles = 0

    @property
    def base_image(self) -> np.ndarray:
        """The cached neutral frame."""
        return self._base

    def reset(self) -> None:
        """Back to the neutral cache (drops the temporal state)."""
        s0 = project(self.rig.pose(Controls(), head=False), self.size)
        self._drawn = Splats2D(s0.means.copy(), s0.conics.copy(), s0.depths.copy(), s0.opacities.copy(),
                               s0.colors, s0.radii.copy())
        self._ranges = [r.copy() for r in kernels.tile_ranges(s0.means, s0.radii, self.size)]
        self._order = np.argsort(s0.depths, kind="stable")
        self._frame = self._base.copy()

    def render(self, controls: Controls) -> np.ndarray:
        controls = controls.clamped()
        frame = self._render_unposed(controls)
        if self.head_warp.active(controls):
            return self.head_warp.apply(frame, controls)
        return frame.copy()

    def _render_unposed(self, controls: Controls) -> np.ndarray:
        """Update the frame buffer to ``controls`` (no head pose).

        Invariant: every tile of ``self._frame`` equals a full render of ``self._drawn``. A Gaussian is
        redrawn when it moved more than ``MOVE_EPS_PX`` from where it is drawn (or changed shape or
        opacity); the tiles under its old and new footprints are re-rendered from all Gaussians.
        """
        rig, size, act, drawn = self.rig, self.size, self._act, self._drawn
        means3, covs3, opac = rig.pose_active(rig.coefficients(controls))
        means = (means3[:, :2] * size).astype(np.float32)
        depths = means3[:, 2].astype(np.float32)
        cov2d = covs3[:, :2, :2].astype(np.float64) * float(size * size)
        conics, radii = conics_from_cov2d(cov2d, opac)
        d_conics = drawn.conics[act]
        moved = np.abs(means - drawn.means[act]).max(axis=1) > MOVE_EPS_PX
        moved |= (np.abs(conics - d_conics) > 1e-4 * (np.abs(d_conics) + 1e-3)).any(axis=1)
        moved |= np.abs(opac - drawn.opacities[act]) > 1e-3
        depth_changed = np.abs(depths - drawn.depths[act]) > 1e-6
        moved |= depth_changed
        idx = act[moved]
        self.last_dirty_tiles = 0
        if idx.size == 0:
            return self._frame
        dirty = np.zeros((self._nt, self._nt), bool)
        _mark(dirty, *(r[idx] for r in self._ranges))  # old footprints
        drawn.means[idx] = means[moved]
        drawn.conics[idx] = conics[moved]
        drawn.opacities[idx] = opac[moved]
        drawn.depths[idx] = depths[moved]
        drawn.radii[idx] = radii[moved]
        new = kernels.tile_ranges(drawn.means[idx], drawn.radii[idx], size)
        for r, nr in zip(self._ranges, new, strict=True):
            r[idx] = nr
        _mark(dirty, *new)  # new footprints
        if depth_changed.any():
            self._order = np.argsort(drawn.depths, kind="stable")
        tiles = np.argwhere(dirty)
        self.last_dirty_tiles = len(tiles)
        kernels.render_tiles(drawn, self._order, tuple(self._ranges), tiles, self._frame)
        return self._frame


def _mark(dirty: np.ndarray, x0, x1, y0, y1) -> None:
    """OR the tile rectangles [x0,x1) x [y0,y1) into ``dirty`` (2D difference array, vectorised)."""
    keep = (x1 > x0) & (y1 > y0)
    if not keep.any():
        return
    x0, x1, y0, y1 = x0[keep], x1[keep], y0[keep], y1[keep]
    n = dirty.shape[0]
    diff = np.zeros((n + 1, n + 1), np.int32)
    np.add.at(diff, (y0, x0), 1)
    np.add.at(diff, (y0, x1), -1)
    np.add.at(diff, (y1, x0), -1)
    np.add.at(diff, (y1, x1), 1)
    dirty |= diff.cumsum(0).cumsum(1)[:n, :n] > 0
