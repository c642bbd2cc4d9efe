"""Runtime rig: controls -> rig points -> posed Gaussians (see ``format.py`` for the data)."""

from __future__ import annotations

import numpy as np

from services.renderer.controls import Controls
from services.renderer.raster.base import PosedGaussians
from services.renderer.replica.format import SHEET_KINDS, Replica, basis_coefficients


def quat_to_rotmat(q: np.ndarray) -> np.ndarray:
    """(N,4) wxyz -> (N,3,3)."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=1),
    ], axis=1)


def covariances(log_scales: np.ndarray, quats: np.ndarray) -> np.ndarray:
    r = quat_to_rotmat(quats.astype(np.float64))
    s = np.exp(log_scales.astype(np.float64))
    m = r * s[:, None, :]
    return np.einsum("nij,nkj->nik", m, m)


def head_rotation(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """(N,3,3) rotations for per-item angles (broadcast arrays).

    Conventions (x right, y down, z away from the camera): positive yaw turns the face towards image
    right, positive pitch nods the face down, positive roll tilts the top of the head towards image right.
    """
    yaw, pitch, roll = np.broadcast_arrays(np.asarray(yaw, float), np.asarray(pitch, float), np.asarray(roll, float))
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    one, zero = np.ones_like(yaw), np.zeros_like(yaw)
    ry = np.stack([np.stack([cy, zero, -sy], -1), np.stack([zero, one, zero], -1), np.stack([sy, zero, cy], -1)], -2)
    rx = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, cp, -sp], -1), np.stack([zero, sp, cp], -1)], -2)
    rz = np.stack([np.stack([cr, -sr, zero], -1), np.stack([sr, cr, zero], -1), np.stack([zero, zero, one], -1)], -2)
    return rz @ rx @ ry


def head_weight_at(xy: np.ndarray, head: dict) -> np.ndarray:
    """Head weight in [0,1] at world points (M,2): 1 inside the head ellipse, smooth fall-off outside."""
    cx, cy = head["center"]
    rx, ry = head["radii"]
    rho = np.sqrt(((xy[..., 0] - cx) / rx) ** 2 + ((xy[..., 1] - cy) / ry) ** 2)
    t = np.clip((rho - 1.0) / head["falloff"], 0.0, 1.0)
    return (1.0 - t * t * (3 - 2 * t)).astype(np.float32)


class Rig:
    """Evaluates a replica's rig. Stateless after construction; safe to share between renderers."""

    def __init__(self, replica: Replica) -> None:
        a = replica.arrays
        self.replica = replica
        self.rest = a["rig_points"].astype(np.float64)
        self.bases = a["rig_bases"].astype(np.float64)
        self.idx = a["bind_idx"].astype(np.int64)
        self.w = a["bind_w"].astype(np.float64)
        self.means0 = a["means"].astype(np.float64)
        self.covs0 = covariances(a["log_scales"], a["quats"])
        self.opac0 = a["opacities"].astype(np.float32)
        self.colors = a["colors"].astype(np.float32)
        self.head_weight = a["head_weight"].astype(np.float64)
        head = replica.meta["head"]
        self.head = head
        self.pivot = np.asarray(head["pivot"], dtype=np.float64)
        kind = a["kind"]
        self.sheet = np.flatnonzero(np.isin(kind, SHEET_KINDS))
        self.sheet_uv = a["sheet_uv"].astype(np.float64)
        self.sheet_sigma = a["sheet_sigma"].astype(np.float64)
        self.gate_basis = a["gate_basis"].astype(np.int64)
        self.gate_range = a["gate_range"].astype(np.float64)
        self.gated = np.flatnonzero(self.gate_basis >= 0)
        # Per-Gaussian displacement bases: G[b, n] = sum_k w[n, k] * bases[b, idx[n, k]].
        g = np.einsum("nk,bnkd->bnd", self.w, self.bases[:, self.idx])
        moving = np.abs(g).max(axis=(0, 2)) > 1e-7
        moving[self.sheet] = True
        moving[self.gated] = True
        self.active = np.flatnonzero(moving)
        self.g_active = g[:, self.active]
        self._active_pos = {int(n): i for i, n in enumerate(self.active)}
        self.sheet_in_active = np.searchsorted(self.active, self.sheet)
        self.gated_in_active = np.searchsorted(self.active, self.gated)
        self.landmark_ids = np.arange(478)

    # -- rig points ---------------------------------------------------------------------------------
    def coefficients(self, controls: Controls) -> np.ndarray:
        return basis_coefficients(controls).astype(np.float64)

    def points(self, coefs: np.ndarray) -> np.ndarray:
        """Rig points (P,3) for basis coefficients (no head pose)."""
        return self.rest + np.tensordot(coefs, self.bases, axes=1)

    # -- Gaussians (no head pose) ---------------------------------------------------------------------
    def pose_active(self, coefs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Means (Na,3), covariances (Na,3,3) and opacities (Na,) of :attr:`active` for ``coefs``."""
        act = self.active
        means = self.means0[act] + np.tensordot(coefs, self.g_active, axes=1)
        covs = self.covs0[act].copy()
        opac = self.opac0[act].copy()
        if self.sheet.size:
            pts = self.points(coefs)
            covs[self.sheet_in_active] = self._sheet_covs(pts)
        if self.gated.size:
            lo, hi = self.gate_range[self.gated, 0], self.gate_range[self.gated, 1]
            val = coefs[self.gate_basis[self.gated]]
            opac[self.gated_in_active] *= np.clip((val - lo) / np.maximum(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)
        return means, covs, opac

    def _sheet_covs(self, pts: np.ndarray) -> np.ndarray:
        s = self.sheet
        q = pts[self.idx[s]]  # (S,4,3): top-left, top-right, bottom-left, bottom-right
        u, v = self.sheet_uv[s, 0:1], self.sheet_uv[s, 1:2]
        d_du = (1 - v) * (q[:, 1] - q[:, 0]) + v * (q[:, 3] - q[:, 2])
        d_dv = (1 - u) * (q[:, 2] - q[:, 0]) + u * (q[:, 3] - q[:, 1])
        a = d_du * self.sheet_sigma[s, 0:1]
        b = d_dv * self.sheet_sigma[s, 1:2]
        cov = a[:, :, None] * a[:, None, :] + b[:, :, None] * b[:, None, :]
        cov += np.eye(3) * 1e-9
        return cov

    def pose(self, controls: Controls, head: bool = True) -> PosedGaussians:
        """Every Gaussian posed by ``controls``; with ``head`` the head's rigid transform is applied in 3D."""
        controls = controls.clamped()
        coefs = self.coefficients(controls)
        means = self.means0.copy()
        covs = self.covs0.copy()
        opac = self.opac0.copy()
        m_a, c_a, o_a = self.pose_active(coefs)
        means[self.active], covs[self.active], opac[self.active] = m_a, c_a, o_a
        if head and (controls.head_yaw or controls.head_pitch or controls.head_roll):
            h = self.head_weight
            moving = np.flatnonzero(h > 1e-4)
            hw = h[moving]
            rot = head_rotation(controls.head_yaw * hw, controls.head_pitch * hw, controls.head_roll * hw)
            rel = means[moving] - self.pivot
            means[moving] = self.pivot + np.einsum("nij,nj->ni", rot, rel)
            covs[moving] = rot @ covs[moving] @ np.transpose(rot, (0, 2, 1))
        return PosedGaussians(means.astype(np.float32), covs.astype(np.float32), opac, self.colors)

    # -- head pose for image-space backends ----------------------------------------------------------------
    def landmarks_posed(self, controls: Controls) -> np.ndarray:
        """(478,3) landmarks with controls and the full 3D head pose applied."""
        controls = controls.clamped()
        pts = self.points(self.coefficients(controls))[:478]
        rot = head_rotation(controls.head_yaw, controls.head_pitch, controls.head_roll)
        return self.pivot + (pts - self.pivot) @ rot.T

    def head_affine(self, controls: Controls) -> np.ndarray:
        """2x3 world-unit affine that best maps the unposed face landmarks to the head-posed ones."""
        controls = controls.clamped()
        if not (controls.head_yaw or controls.head_pitch or controls.head_roll):
            return np.array([[1.0, 0, 0], [0, 1.0, 0]])
        src = self.rest[:478]
        rot = head_rotation(controls.head_yaw, controls.head_pitch, controls.head_roll)
        dst = self.pivot + (src - self.pivot) @ rot.T
        a = np.c_[src[:, :2], np.ones(len(src))]
        sol, *_ = np.linalg.lstsq(a, dst[:, :2], rcond=None)
        return sol.T
