"""Differentiable tile splatting in PyTorch (CPU or CUDA): used to fit replicas, and as a backend.

Same conventions as ``base.py``. Each tile gets the depth-ordered list of Gaussians whose cut-off
disc touches it (padded to the longest list with a transparent filler); alphas are evaluated for all
(tile, Gaussian, pixel) triples and composited with an exclusive cumulative sum of ``log(1 - alpha)``.
"""

from __future__ import annotations

import numpy as np
import torch

from services.renderer.controls import Controls
from services.renderer.raster.base import ALPHA_MAX, ALPHA_MIN, EPS2D, TILE, Rasterizer, project


def conics_from_params(log_scales: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2D Gaussians given by pixel log-scales (N,2) and angle (N,): conics (N,3) and covariance (a,b,c)."""
    s = torch.exp(log_scales)
    c, si = torch.cos(theta), torch.sin(theta)
    s1, s2 = s[:, 0] ** 2, s[:, 1] ** 2
    a = c * c * s1 + si * si * s2 + EPS2D
    b = c * si * (s1 - s2)
    d = si * si * s1 + c * c * s2 + EPS2D
    det = a * d - b * b
    return torch.stack([d / det, -b / det, a / det], dim=1), torch.stack([a, b, d], dim=1)


def radii_from_cov(cov: np.ndarray, opacities: np.ndarray) -> np.ndarray:
    a, b, d = cov[:, 0], cov[:, 1], cov[:, 2]
    mid = 0.5 * (a + d)
    lam = mid + np.sqrt(np.maximum(mid * mid - (a * d - b * b), 0.01))
    extent = np.sqrt(2.0 * np.log(np.maximum(opacities * 255.0, 1.0 + 1e-6)))
    r = np.minimum(extent, 3.33) * np.sqrt(lam)
    r[opacities < ALPHA_MIN] = 0
    return r


def tile_lists(means: np.ndarray, radii: np.ndarray, order: np.ndarray, size: int, tile: int = TILE):
    """Per-tile depth-ordered Gaussian lists: (lists (T, M) int64 padded with -1, counts (T,)), T = all tiles."""
    nt = (size + tile - 1) // tile
    x0 = np.clip(np.floor((means[:, 0] - radii) / tile), 0, nt).astype(np.int64)
    x1 = np.clip(np.floor((means[:, 0] + radii) / tile) + 1, 0, nt).astype(np.int64)
    y0 = np.clip(np.floor((means[:, 1] - radii) / tile), 0, nt).astype(np.int64)
    y1 = np.clip(np.floor((means[:, 1] + radii) / tile) + 1, 0, nt).astype(np.int64)
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    nx = np.where(radii > 0, np.maximum(x1 - x0, 0), 0)
    ny = np.where(radii > 0, np.maximum(y1 - y0, 0), 0)
    cnt = nx * ny
    g = np.repeat(np.arange(len(means)), cnt)
    local = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    tx = x0[g] + local % np.maximum(nx[g], 1)
    ty = y0[g] + local // np.maximum(nx[g], 1)
    tid = ty * nt + tx
    key = np.lexsort((rank[g], tid))
    tid, g = tid[key], g[key]
    counts = np.bincount(tid, minlength=nt * nt)
    m = max(int(counts.max()) if counts.size else 0, 1)
    lists = np.full((nt * nt, m), -1, np.int64)
    starts = np.cumsum(counts) - counts
    pos = np.arange(len(tid)) - starts[tid]
    lists[tid, pos] = g
    return lists, counts


def render_tiles(means, conics, opac, colors, lists: torch.Tensor, tile_ids: torch.Tensor, size: int,
                 tile: int = TILE, background=None) -> torch.Tensor:
    """Colours (T, tile*tile, 3) of tiles ``tile_ids`` (flat ids); ``lists`` (T, M) uses -1 for padding."""
    nt = (size + tile - 1) // tile
    dev = means.device
    n = means.shape[0]
    # Dummy transparent Gaussian at index n.
    means_p = torch.cat([means, means.new_zeros(1, 2)])
    conics_p = torch.cat([conics, conics.new_tensor([[1.0, 0.0, 1.0]])])
    opac_p = torch.cat([opac, opac.new_zeros(1)])
    colors_p = torch.cat([colors, colors.new_zeros(1, 3)])
    idx = torch.where(lists < 0, torch.full_like(lists, n), lists)
    ty = (tile_ids // nt).to(dev)
    tx = (tile_ids % nt).to(dev)
    oy, ox = torch.meshgrid(torch.arange(tile, device=dev), torch.arange(tile, device=dev), indexing="ij")
    py = (ty[:, None] * tile + oy.reshape(1, -1)).float() + 0.5   # (T, P)
    px = (tx[:, None] * tile + ox.reshape(1, -1)).float() + 0.5
    mx = means_p[idx, 0][:, :, None]                                 # (T, M, 1)
    my = means_p[idx, 1][:, :, None]
    ca, cb, cc = (conics_p[idx, i][:, :, None] for i in range(3))
    dx = mx - px[:, None, :]
    dy = my - py[:, None, :]
    sig = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy            # (T, M, P)
    alpha = torch.clamp(opac_p[idx][:, :, None] * torch.exp(-sig), max=ALPHA_MAX)
    alpha = torch.where((sig >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
    log_t = torch.log1p(-alpha)
    csum = torch.cumsum(log_t, dim=1)
    trans = torch.exp(csum - log_t)                                  # exclusive
    wgt = alpha * trans
    rgb = torch.einsum("tmp,tmc->tpc", wgt, colors_p[idx])
    if background is not None:
        rgb = rgb + torch.exp(csum[:, -1, :])[:, :, None] * background
    return rgb


def tiles_to_image(tiles_rgb: torch.Tensor, size: int, tile: int = TILE) -> torch.Tensor:
    nt = (size + tile - 1) // tile
    img = tiles_rgb.reshape(nt, nt, tile, tile, 3).permute(0, 2, 1, 3, 4).reshape(nt * tile, nt * tile, 3)
    return img[:size, :size]


def render_image(means, conics, opac, colors, depths: np.ndarray, radii: np.ndarray, size: int,
                 chunk: int = 64) -> torch.Tensor:
    """Whole image (size, size, 3) float, no grad needed (chunked over tiles)."""
    order = np.argsort(depths, kind="stable")
    lists, counts = tile_lists(means.detach().cpu().numpy(), radii, order, size)
    out = []
    nt2 = lists.shape[0]
    for start in range(0, nt2, chunk):
        ids = np.arange(start, min(start + chunk, nt2))
        m = max(int(counts[ids].max()), 1)
        out.append(render_tiles(means, conics, opac, colors, torch.from_numpy(lists[ids, :m]),
                                torch.from_numpy(ids), size))
    return tiles_to_image(torch.cat(out), size)


class TorchRasterizer(Rasterizer):
    """Full 3D pose, every tile, in PyTorch (slow on CPU; a fallback and cross-check)."""

    name = "torch"

    def render(self, controls: Controls) -> np.ndarray:
        sp = project(self.rig.pose(controls, head=True), self.size)
        with torch.no_grad():
            img = render_image(torch.from_numpy(sp.means), torch.from_numpy(sp.conics),
                               torch.from_numpy(sp.opacities), torch.from_numpy(sp.colors), sp.depths, sp.radii,
                               self.size)
        return (img.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
