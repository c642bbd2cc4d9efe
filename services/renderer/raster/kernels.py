"""Tile kernels for the CPU rasterizer: numba when installed, a NumPy fallback otherwise.

``render_tiles`` bins the (depth-sorted) Gaussians into the requested 16x16 tiles and composites
each pixel front to back with the conventions in ``base.py``, writing uint8 RGB into ``out``.
Both implementations give identical pixels up to float rounding.
"""

from __future__ import annotations

import math

import numpy as np

from services.renderer.raster.base import ALPHA_MAX, ALPHA_MIN, T_MIN_CPU, TILE

try:  # pragma: no cover - exercised by whichever is installed
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    numba = None
    HAVE_NUMBA = False


def _render_tiles_py(mx, my, ca, cb, cc, op, rr, col, order, gx0, gx1, gy0, gy1, tile_slot, tiles, out, tile):
    h, w = out.shape[0], out.shape[1]
    n_tiles = tiles.shape[0]
    counts = np.zeros(n_tiles + 1, np.int64)
    for gi in range(order.shape[0]):
        g = order[gi]
        for ty in range(gy0[g], gy1[g]):
            for tx in range(gx0[g], gx1[g]):
                s = tile_slot[ty, tx]
                if s >= 0:
                    counts[s + 1] += 1
    offsets = np.cumsum(counts)
    fill = offsets[:-1].copy()
    lists = np.empty(offsets[-1], np.int64)
    for gi in range(order.shape[0]):
        g = order[gi]
        for ty in range(gy0[g], gy1[g]):
            for tx in range(gx0[g], gx1[g]):
                s = tile_slot[ty, tx]
                if s >= 0:
                    lists[fill[s]] = g
                    fill[s] += 1
    # Per tile, Gaussian-major: each Gaussian (front to back) touches only the pixels inside its
    # cut-off box, in the same per-pixel order as a pixel-major loop would.
    tr = np.empty(tile * tile, np.float32)
    tg = np.empty(tile * tile, np.float32)
    tb = np.empty(tile * tile, np.float32)
    tt = np.empty(tile * tile, np.float32)
    row_alive = np.empty(tile, np.int64)
    for s in range(n_tiles):
        start = offsets[s]
        n = offsets[s + 1] - start
        ty0 = tiles[s, 0] * tile
        tx0 = tiles[s, 1] * tile
        th = min(tile, h - ty0)
        tw = min(tile, w - tx0)
        for i in range(tile * tile):
            tr[i] = 0.0
            tg[i] = 0.0
            tb[i] = 0.0
            tt[i] = 1.0
        alive = th * tw
        for py in range(tile):
            row_alive[py] = tw if py < th else 0
        for k in range(n):
            g = lists[start + k]
            gx = mx[g] - tx0
            gy = my[g] - ty0
            rad = rr[g]
            x_lo = max(int(math.floor(gx - rad - 0.5)), 0)
            x_hi = min(int(math.ceil(gx + rad - 0.5)), tw - 1)
            y_lo = max(int(math.floor(gy - rad - 0.5)), 0)
            y_hi = min(int(math.ceil(gy + rad - 0.5)), th - 1)
            if x_lo > x_hi or y_lo > y_hi:
                continue
            a_ = ca[g]
            b_ = cb[g]
            c_ = cc[g]
            o_ = op[g]
            # alpha >= 1/255 <=> sig <= ln(255 o): skip exp() outside that ellipse.
            sig_max = math.log(max(o_ * 255.0, 1e-30))
            cr = col[g, 0]
            cg = col[g, 1]
            cbl = col[g, 2]
            for py in range(y_lo, y_hi + 1):
                if row_alive[py] == 0:
                    continue
                dy = gy - (py + 0.5)
                row = py * tile
                for px in range(x_lo, x_hi + 1):
                    i = row + px
                    t = tt[i]
                    if t <= 0.0:
                        continue
                    dx = gx - (px + 0.5)
                    sig = 0.5 * (a_ * dx * dx + c_ * dy * dy) + b_ * dx * dy
                    if sig < 0.0 or sig > sig_max:
                        continue
                    alpha = o_ * math.exp(-sig)
                    if alpha > ALPHA_MAX:
                        alpha = ALPHA_MAX
                    if alpha < ALPHA_MIN:
                        continue
                    nt = t * (1.0 - alpha)
                    wgt = alpha * t
                    tr[i] += cr * wgt
                    tg[i] += cg * wgt
                    tb[i] += cbl * wgt
                    if nt <= T_MIN_CPU:
                        # What is left behind could change this pixel by < half a level: done.
                        tt[i] = 0.0
                        alive -= 1
                        row_alive[py] -= 1
                    else:
                        tt[i] = nt
            if alive <= 0:
                break
        for py in range(th):
            for px in range(tw):
                i = py * tile + px
                out[ty0 + py, tx0 + px, 0] = np.uint8(min(max(tr[i], 0.0), 1.0) * 255.0 + 0.5)
                out[ty0 + py, tx0 + px, 1] = np.uint8(min(max(tg[i], 0.0), 1.0) * 255.0 + 0.5)
                out[ty0 + py, tx0 + px, 2] = np.uint8(min(max(tb[i], 0.0), 1.0) * 255.0 + 0.5)


if HAVE_NUMBA:  # pragma: no branch
    _render_tiles_impl = numba.njit(cache=True, nogil=True, fastmath=True)(_render_tiles_py)
else:  # pragma: no cover
    _render_tiles_impl = None


def tile_ranges(means: np.ndarray, radii: np.ndarray, size: int, tile: int = TILE):
    """Per-Gaussian tile index ranges [x0, x1) x [y0, y1) covering its cut-off disc (empty if none)."""
    nt = (size + tile - 1) // tile
    x0 = np.clip(np.floor((means[:, 0] - radii) / tile), 0, nt).astype(np.int32)
    x1 = np.clip(np.floor((means[:, 0] + radii) / tile) + 1, 0, nt).astype(np.int32)
    y0 = np.clip(np.floor((means[:, 1] - radii) / tile), 0, nt).astype(np.int32)
    y1 = np.clip(np.floor((means[:, 1] + radii) / tile) + 1, 0, nt).astype(np.int32)
    empty = radii <= 0
    x1[empty] = x0[empty]
    return x0, x1, y0, y1


def render_tiles(splats, order: np.ndarray, ranges, tiles: np.ndarray, out: np.ndarray, tile: int = TILE) -> None:
    """Render ``tiles`` ((T,2) int: tile row, tile column) of ``splats`` into uint8 ``out`` (H,W,3)."""
    if len(tiles) == 0:
        return
    size = out.shape[0]
    nt = (size + tile - 1) // tile
    slot = np.full((nt, nt), -1, np.int64)
    slot[tiles[:, 0], tiles[:, 1]] = np.arange(len(tiles))
    x0, x1, y0, y1 = ranges
    args = (
        splats.means[:, 0], splats.means[:, 1], splats.conics[:, 0], splats.conics[:, 1], splats.conics[:, 2],
        splats.opacities, splats.radii, splats.colors, order.astype(np.int64), x0, x1, y0, y1, slot,
        tiles.astype(np.int64), out, tile,
    )
    if HAVE_NUMBA:
        _render_tiles_impl(*[np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a for a in args[:-2]],
                           out, tile)
    else:  # pragma: no cover
        _render_tiles_numpy(splats, order, ranges, tiles, out, tile)


def _render_tiles_numpy(splats, order, ranges, tiles, out, tile):  # pragma: no cover - used without numba
    """Vectorised NumPy fallback (slower): per tile, all its Gaussians against all its pixels."""
    x0, x1, y0, y1 = ranges
    size = out.shape[0]
    ordered = order
    for ty, tx in tiles:
        sel = ordered[(x0[ordered] <= tx) & (x1[ordered] > tx) & (y0[ordered] <= ty) & (y1[ordered] > ty)]
        py, px = np.mgrid[ty * tile:min((ty + 1) * tile, size), tx * tile:min((tx + 1) * tile, size)]
        fx = px.ravel() + 0.5
        fy = py.ravel() + 0.5
        if sel.size == 0:
            out[py, px] = 0
            continue
        dx = splats.means[sel, 0][:, None] - fx[None]
        dy = splats.means[sel, 1][:, None] - fy[None]
        a, b, c = (splats.conics[sel, i][:, None] for i in range(3))
        sig = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        alpha = np.minimum(ALPHA_MAX, splats.opacities[sel][:, None] * np.exp(-sig))
        alpha[(sig < 0) | (alpha < ALPHA_MIN)] = 0.0
        trans = np.cumprod(1.0 - alpha, axis=0)
        before = np.vstack([np.ones((1, trans.shape[1])), trans[:-1]])
        alive = before > T_MIN_CPU
        wgt = np.where(alive, alpha * before, 0.0)
        rgb = wgt.T @ splats.colors[sel]
        out[py.ravel(), px.ravel()] = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
