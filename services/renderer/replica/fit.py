"""Fitting 2D-projected Gaussians to a portrait with Adam and the differentiable tile splatter."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from services.renderer.raster.base import TILE
from services.renderer.raster.torch_splat import (
    conics_from_params,
    radii_from_cov,
    render_image,
    render_tiles,
    tile_lists,
)


@dataclass
class FitResult:
    means: np.ndarray       # (N,2) pixels
    log_scales: np.ndarray  # (N,2) pixels
    theta: np.ndarray       # (N,)
    opacities: np.ndarray   # (N,)
    colors: np.ndarray      # (N,3)
    iterations: int
    seconds: float
    psnr_face: float


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse <= 1e-12 else 10 * math.log10(1.0 / mse)


def fit_gaussians(
    target: np.ndarray,
    means: np.ndarray,
    log_scales: np.ndarray,
    opacities: np.ndarray,
    colors: np.ndarray,
    depths: np.ndarray,
    frozen: dict[str, np.ndarray] | None,
    tile_weight: np.ndarray,
    face_box: tuple[int, int, int, int],
    *,
    iterations: int = 400,
    batch_tiles: int = 96,
    target_psnr: float = 25.0,
    extra_iterations: int = 300,
    progress: Callable[[float, str], None] | None = None,
    seed: int = 0,
) -> FitResult:
    """Fit trainable Gaussians (pixel units at the target's size) to ``target`` (R,R,3) in [0,1].

    ``frozen`` Gaussians (means, conics, opacities, colors, depths) are drawn but not optimised (the
    mouth interior and eyelid sheets at rest). Runs ``iterations`` steps, then up to
    ``extra_iterations`` more while the face-box PSNR is below ``target_psnr``.
    """
    t0 = time.perf_counter()
    size = target.shape[0]
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(means)
    p_means = torch.tensor(means, dtype=torch.float32, requires_grad=True)
    p_logs = torch.tensor(log_scales, dtype=torch.float32, requires_grad=True)
    p_theta = torch.zeros(n, dtype=torch.float32, requires_grad=True)
    op = np.clip(opacities, 0.02, 0.98)
    p_op = torch.tensor(np.log(op / (1 - op)), dtype=torch.float32, requires_grad=True)
    p_col = torch.tensor(colors, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.Adam([
        {"params": [p_means], "lr": 0.06},
        {"params": [p_logs], "lr": 0.02},
        {"params": [p_theta], "lr": 0.03},
        {"params": [p_op], "lr": 0.05},
        {"params": [p_col], "lr": 0.02},
    ], eps=1e-8)
    base_lrs = [g["lr"] for g in opt.param_groups]
    if frozen is not None and len(frozen["means"]):
        f_means = torch.tensor(frozen["means"], dtype=torch.float32)
        f_conics = torch.tensor(frozen["conics"], dtype=torch.float32)
        f_op = torch.tensor(frozen["opacities"], dtype=torch.float32)
        f_col = torch.tensor(frozen["colors"], dtype=torch.float32)
        f_radii = frozen["radii"]
        all_depths = np.concatenate([depths, frozen["depths"]])
    else:
        f_means = f_conics = f_op = f_col = None
        f_radii = np.zeros(0)
        all_depths = depths
    order = np.argsort(all_depths, kind="stable")
    target_t = torch.tensor(target, dtype=torch.float32)
    nt = (size + TILE - 1) // TILE
    tgt_tiles = target_t[: nt * TILE, : nt * TILE].reshape(nt, TILE, nt, TILE, 3).permute(0, 2, 1, 3, 4)
    tgt_tiles = tgt_tiles.reshape(nt * nt, TILE * TILE, 3)
    prob = tile_weight.reshape(-1).astype(np.float64)
    prob = prob / prob.sum()

    def assemble():
        conics, cov = conics_from_params(p_logs, p_theta)
        opac = torch.sigmoid(p_op)
        m, c, o, col = p_means, conics, opac, p_col
        if f_means is not None:
            m = torch.cat([m, f_means])
            c = torch.cat([c, f_conics])
            o = torch.cat([o, f_op])
            col = torch.cat([col, f_col])
        return m, c, o, col, cov

    def rebuild_lists():
        with torch.no_grad():
            _, _, o, _, cov = assemble()
            r = radii_from_cov(cov.numpy().astype(np.float64), o[:n].numpy()) + 1.5
            radii = np.concatenate([r, f_radii]) if f_radii.size else r
            return tile_lists(torch.cat([p_means.detach(), f_means]).numpy() if f_means is not None
                              else p_means.detach().numpy(), radii, order, size)

    def face_psnr() -> float:
        with torch.no_grad():
            m, c, o, col, cov = assemble()
            r = radii_from_cov(cov.numpy().astype(np.float64), o[:n].numpy())
            radii = np.concatenate([r, f_radii]) if f_radii.size else r
            img = render_image(m, c, o, col, all_depths, radii, size).clamp(0, 1).numpy()
        x0, y0, x1, y1 = face_box
        return psnr(img[y0:y1, x0:x1], target[y0:y1, x0:x1])

    total = iterations
    it = 0
    lists = counts = None
    last_psnr = float("nan")
    while True:
        for _ in range(total - it):
            if it % 40 == 0:
                lists, counts = rebuild_lists()
            frac = it / max(total, 1)
            for g, lr in zip(opt.param_groups, base_lrs, strict=True):
                g["lr"] = lr * (0.15 + 0.85 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
            ids = rng.choice(nt * nt, size=min(batch_tiles, nt * nt), replace=False, p=prob)
            m_max = max(int(counts[ids].max()), 1)
            m, c, o, col, _ = assemble()
            pred = render_tiles(m, c, o, col, torch.from_numpy(lists[ids, :m_max]), torch.from_numpy(ids), size)
            diff = pred - tgt_tiles[ids]
            loss = (diff * diff).mean() + 0.1 * diff.abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                p_col.clamp_(0.0, 1.0)
                p_logs.clamp_(math.log(0.25), math.log(size / 12))
                p_means.clamp_(-4.0, size + 4.0)
            it += 1
            if progress is not None and it % 20 == 0:
                progress(min(it / (iterations + extra_iterations), 1.0), f"fitting Gaussians: step {it}")
        last_psnr = face_psnr()
        if last_psnr >= target_psnr or it >= iterations + extra_iterations:
            break
        total = min(it + 100, iterations + extra_iterations)
    del gen
    with torch.no_grad():
        return FitResult(
            means=p_means.numpy().copy(),
            log_scales=p_logs.numpy().copy(),
            theta=p_theta.numpy().copy(),
            opacities=torch.sigmoid(p_op).numpy().copy(),
            colors=p_col.numpy().copy(),
            iterations=it,
            seconds=time.perf_counter() - t0,
            psnr_face=last_psnr,
        )
