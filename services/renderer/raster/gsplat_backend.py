"""gsplat (CUDA) backend: the replica's 3D Gaussians through ``gsplat.rasterization``, batched.

Each session's Gaussians are posed by the rig (expression controls; NumPy on the active subset), stacked
into one ``[B, N, ...]`` batch (padded with transparent Gaussians), rendered in one call with an
orthographic camera (``camera_model="ortho"``, ``K = diag(size, size, 1)``: pixel = world * size, the
same conventions as the CPU rasterizer, ``eps2d = 0.3``), then the head pose is applied as the same
image warp as on the CPU (``base.HeadWarp``) with ``grid_sample`` on the GPU.

Needs ``pip install gsplat`` (1.5.x; it JIT-compiles its CUDA kernels on first use, which needs nvcc,
or use a prebuilt wheel) and a CUDA GPU; without them the constructor raises ``BackendUnavailable``.
"""

from __future__ import annotations

import numpy as np

from parley.errors import BackendUnavailable
from services.renderer.controls import Controls
from services.renderer.raster.base import EPS2D, HeadWarp, Rasterizer

Z_OFFSET = 10.0  # camera-space depth = z + 10, in front of gsplat's near plane


def gsplat_available() -> tuple[bool, str]:
    """(usable, reason) for this process."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, "no CUDA device (gsplat rasterizes on NVIDIA GPUs only)"
    try:
        import gsplat  # noqa: F401
    except ImportError as exc:
        return False, f"gsplat is not installed ({exc}); pip install gsplat"
    return True, "ok"


class GsplatRasterizer(Rasterizer):
    name = "gsplat"

    def __init__(self, replica, size: int = 512, device: str = "cuda") -> None:
        ok, why = gsplat_available()
        if not ok:
            raise BackendUnavailable(f"gsplat backend unavailable: {why}")
        import torch

        super().__init__(replica, size)
        self.device = torch.device(device)
        rig = self.rig
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=self.device)  # noqa: E731
        self._means0 = t(rig.means0)
        self._covs0 = t(rig.covs0)
        self._opac0 = t(rig.opac0)
        self._colors = t(rig.colors)
        self._act = torch.as_tensor(rig.active, device=self.device)
        warp = self.head_warp
        self._warp_field = t(warp.field)
        self._warp_px = t(warp.px)
        self._warp_py = t(warp.py)

    def posed(self, controls: Controls):
        """(means, covs, opacities) tensors on the GPU for ``controls`` (no head pose)."""
        import torch

        means3, covs3, opac = self.rig.pose_active(self.rig.coefficients(controls.clamped()))
        means = self._means0.clone()
        covs = self._covs0.clone()
        op = self._opac0.clone()
        means[self._act] = torch.as_tensor(means3, dtype=torch.float32, device=self.device)
        covs[self._act] = torch.as_tensor(covs3, dtype=torch.float32, device=self.device)
        op[self._act] = torch.as_tensor(opac, dtype=torch.float32, device=self.device)
        means[:, 2] += Z_OFFSET
        return means, covs, op

    def render(self, controls: Controls) -> np.ndarray:
        return self.render_batch([(self, controls)])[0]

    @classmethod
    def render_batch(cls, items: list[tuple[Rasterizer, Controls]]) -> list[np.ndarray]:
        import torch
        import torch.nn.functional as F
        from gsplat import rasterization

        out: list[np.ndarray | None] = [None] * len(items)
        by_size: dict[int, list[int]] = {}
        for i, (r, _) in enumerate(items):
            by_size.setdefault(r.size, []).append(i)
        for size, idxs in by_size.items():
            dev = items[idxs[0]][0].device
            posed = [items[i][0].posed(items[i][1]) for i in idxs]
            n_max = max(p[0].shape[0] for p in posed)
            b = len(idxs)
            means = torch.zeros(b, n_max, 3, device=dev)
            means[:, :, 2] = Z_OFFSET
            covs = torch.eye(3, device=dev).repeat(b, n_max, 1, 1) * 1e-6
            opac = torch.zeros(b, n_max, device=dev)
            colors = torch.zeros(b, n_max, 3, device=dev)
            for j, (i, (m, c, o)) in enumerate(zip(idxs, posed, strict=True)):
                n = m.shape[0]
                means[j, :n], covs[j, :n], opac[j, :n] = m, c, o
                colors[j, :n] = items[i][0]._colors
            viewmats = torch.eye(4, device=dev).repeat(b, 1, 1, 1)
            ks = torch.tensor([[size, 0.0, 0.0], [0.0, size, 0.0], [0.0, 0.0, 1.0]], device=dev).repeat(b, 1, 1, 1)
            with torch.no_grad():
                img, _, _ = rasterization(
                    means, None, None, opac, colors, viewmats, ks, size, size, covars=covs, eps2d=EPS2D,
                    camera_model="ortho", packed=False, near_plane=0.01, far_plane=1e4,
                    backgrounds=torch.zeros(b, 1, 3, device=dev),
                )
                img = img[:, 0].clamp(0, 1)  # (B, H, W, 3)
                for j, i in enumerate(idxs):
                    r, c = items[i]
                    frame = img[j]
                    if HeadWarp.active(c.clamped()):
                        frame = r._warp(frame, c.clamped(), F)
                    out[i] = (frame * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
        return out  # type: ignore[return-value]

    def _warp(self, frame, controls: Controls, F):
        """The HeadWarp on the GPU (grid_sample, bilinear, border replicate)."""
        import torch

        aff = self.rig.head_affine(controls)
        inv = np.linalg.inv(np.vstack([aff, [0, 0, 1]]))
        px, py, h = self._warp_px, self._warp_py, self._warp_field
        sx = px + h * ((inv[0, 0] - 1) * px + inv[0, 1] * py + inv[0, 2])
        sy = py + h * (inv[1, 0] * px + (inv[1, 1] - 1) * py + inv[1, 2])
        grid = torch.stack([sx * 2 - 1, sy * 2 - 1], dim=-1)[None]  # align_corners=False convention
        grid = F.interpolate(grid.permute(0, 3, 1, 2), size=(self.size, self.size), mode="bilinear",
                             align_corners=False).permute(0, 2, 3, 1)
        res = F.grid_sample(frame.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border",
                            align_corners=False)
        return res[0].permute(1, 2, 0)
