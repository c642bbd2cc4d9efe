"""Geometry helpers for building replicas: polygons, sampling grids, contours, rotations."""

from __future__ import annotations

import math

import numpy as np


def points_in_poly(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    from matplotlib.path import Path  # matplotlib ships with mediapipe

    return Path(poly).contains_points(pts)


def poly_mask(poly: np.ndarray, size: int, dilate_px: float = 0.0) -> np.ndarray:
    import cv2

    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
    if dilate_px > 0:
        k = int(2 * round(dilate_px) + 1)
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return mask.astype(bool)


def grid(size: int, spacing: float, rng: np.random.Generator) -> np.ndarray:
    n = int(math.ceil(size / spacing))
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float64)
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1) * spacing + spacing / 2
    pts += rng.uniform(-0.25, 0.25, pts.shape) * spacing
    return pts[(pts >= 0).all(1) & (pts < size).all(1)]


def sample(img: np.ndarray, pts: np.ndarray) -> np.ndarray:
    ix = np.clip(pts[:, 0].astype(int), 0, img.shape[1] - 1)
    iy = np.clip(pts[:, 1].astype(int), 0, img.shape[0] - 1)
    return img[iy, ix]


def quat_z(theta: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(theta / 2), np.zeros_like(theta), np.zeros_like(theta), np.sin(theta / 2)], axis=1)


def contour_param(xq: np.ndarray, cx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segment index j and fraction s of ``xq`` along the monotone-ish x positions ``cx``."""
    j = np.clip(np.searchsorted(cx, xq) - 1, 0, len(cx) - 2)
    s = np.clip((xq - cx[j]) / np.maximum(cx[j + 1] - cx[j], 1e-9), 0, 1)
    return j, s


def interp_contour_y(xq: np.ndarray, cont: np.ndarray) -> np.ndarray:
    j, s = contour_param(xq, cont[:, 0])
    return cont[j, 1] * (1 - s) + cont[j + 1, 1] * s


