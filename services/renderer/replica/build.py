"""Build a replica from one photo: detect, crop, initialise, fit, add what a still lacks, bind.

1. Decode and check the photo (size limits, readable image), find 478 face-mesh landmarks
   (MediaPipe, irises refined). No face -> ``InvalidInput("no face found ...")``.
2. Crop a square portrait around the face (2.2x the landmark box, slightly above centre) at
   ``resolution`` px and run the mesh again on it.
3. Initialise Gaussians on jittered grids: fine on the face (3 px), medium on hair/head (4.5 px),
   coarse on the background (9 px), plus a coarse opaque under-layer behind the head that fills skin
   stretched by the rig. Colours start from the blurred photo, depths from the mesh.
4. Add what a still photo lacks, as frozen Gaussians drawn during the fit so the neutral face is
   unchanged: a dark mouth interior sheet between the inner lips, upper/lower teeth rows just inside
   the lips (revealed as the jaw opens), eyelid sheets (skin sampled above each eye, darker lash
   line) that unfold over the eye on blink, and a sclera backdrop revealed when the iris moves.
5. Fit colour, position, shape and opacity with Adam through the differentiable splatter until the
   face-box PSNR reaches the target (25 dB by default).
6. Bind every Gaussian to the rig: inside the mouth opening to the inner lips (upper or lower half),
   inside the eye opening to the iris (iris pixels) or the eye corners, elsewhere to the 4 nearest
   landmarks on its own side of the lip and eyelid seams, with weights fading to zero a short way
   off the face. Head weights come from an ellipse around face and hair.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable

import numpy as np

from parley.errors import InvalidInput
from services.renderer.raster.base import conics_from_cov2d
from services.renderer.replica import landmarks as L
from services.renderer.replica.fit import fit_gaussians, psnr
from services.renderer.replica.format import (
    BASIS_NAMES,
    FORMAT_NAME,
    FORMAT_VERSION,
    K_BIND,
    KIND_COARSE,
    KIND_EYEBALL,
    KIND_FACE,
    KIND_LID,
    KIND_MOUTH,
    KIND_TEETH,
    SHEET_KINDS,
    Replica,
)
from services.renderer.replica.rig_design import EYES, IRISES, LOWER_LIDS, LOWER_LIP, UPPER_LIDS, UPPER_LIP, design_rig

MAX_PHOTO_BYTES = 20 * 1024 * 1024
MAX_PHOTO_PIXELS = 4096 * 4096
MAX_PHOTO_SIDE = 16384
DEFAULT_RESOLUTION = 512

Progress = Callable[[float, str], None]


# ----------------------------------------------------------------------------------------------------------
# Input
# ----------------------------------------------------------------------------------------------------------
def decode_photo(photo: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from encoded bytes (JPEG/PNG/WebP/...) or an array; InvalidInput if bad."""
    if isinstance(photo, np.ndarray):
        arr = photo
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise InvalidInput(f"photo array must be (H, W, 3) RGB, got shape {photo.shape}")
        if arr.shape[0] * arr.shape[1] > MAX_PHOTO_PIXELS or max(arr.shape[:2]) > MAX_PHOTO_SIDE:
            raise InvalidInput(f"photo is {arr.shape[1]}x{arr.shape[0]} pixels; the limit is 4096x4096 (16.8 MP)")
        if arr.dtype != np.uint8:
            if arr.dtype.kind != "f" or not np.isfinite(arr).all():
                raise InvalidInput(f"photo array must be uint8 or finite floats in [0, 1], got {arr.dtype}")
            arr = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
        return np.ascontiguousarray(arr[:, :, :3])
    data = bytes(photo)
    if not data:
        raise InvalidInput("photo is empty")
    if len(data) > MAX_PHOTO_BYTES:
        raise InvalidInput(f"photo is {len(data) / 1e6:.1f} MB; the limit is {MAX_PHOTO_BYTES // (1024 * 1024)} MB")
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > MAX_PHOTO_PIXELS or max(w, h) > MAX_PHOTO_SIDE:
                raise InvalidInput(f"photo is {w}x{h} pixels; the limit is 4096x4096 (16.8 MP)")
            im = ImageOps.exif_transpose(im)
            arr = np.asarray(im.convert("RGB"))
    except InvalidInput:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InvalidInput(f"could not decode the photo as an image (JPEG, PNG, WebP ...): {exc}") from exc
    if min(arr.shape[:2]) < 64:
        raise InvalidInput(f"photo is {arr.shape[1]}x{arr.shape[0]} pixels; at least 64x64 is needed")
    return np.ascontiguousarray(arr)


def _detect(rgb: np.ndarray) -> np.ndarray | None:
    """Landmarks (478,3) in pixels of ``rgb``; detection runs on a copy at most 1280 px wide."""
    import cv2

    scale = min(1.0, 1280.0 / max(rgb.shape[:2]))
    small = rgb if scale == 1.0 else cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    lm = L.detect_landmarks(small)
    return None if lm is None else lm / scale


def crop_portrait(rgb: np.ndarray, lm: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Square portrait around the face and the 2x3 affine (image px -> portrait px)."""
    import cv2

    x0, y0 = lm[:, :2].min(0)
    x1, y1 = lm[:, :2].max(0)
    fw, fh = x1 - x0, y1 - y0
    side = 2.2 * max(fw, fh)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - 0.08 * fh
    src = rgb
    pre = 1.0
    if side > 1.5 * resolution:  # downsample first so the crop is not aliased
        pre = 1.5 * resolution / side
        src = cv2.resize(rgb, None, fx=pre, fy=pre, interpolation=cv2.INTER_AREA)
    s = resolution / side
    m = np.array([[s, 0, resolution / 2 - s * cx], [0, s, resolution / 2 - s * cy]])
    m_src = m.copy()
    m_src[:, :2] /= pre
    out = cv2.warpAffine(src, m_src, (resolution, resolution), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    return out, m


# ----------------------------------------------------------------------------------------------------------
# Geometry helpers
# ----------------------------------------------------------------------------------------------------------
def _points_in_poly(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    from matplotlib.path import Path  # matplotlib ships with mediapipe

    return Path(poly).contains_points(pts)


def _poly_mask(poly: np.ndarray, size: int, dilate_px: float = 0.0) -> np.ndarray:
    import cv2

    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
    if dilate_px > 0:
        k = int(2 * round(dilate_px) + 1)
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return mask.astype(bool)


def _grid(size: int, spacing: float, rng: np.random.Generator) -> np.ndarray:
    n = int(math.ceil(size / spacing))
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float64)
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1) * spacing + spacing / 2
    pts += rng.uniform(-0.25, 0.25, pts.shape) * spacing
    return pts[(pts >= 0).all(1) & (pts < size).all(1)]


def _sample(img: np.ndarray, pts: np.ndarray) -> np.ndarray:
    ix = np.clip(pts[:, 0].astype(int), 0, img.shape[1] - 1)
    iy = np.clip(pts[:, 1].astype(int), 0, img.shape[0] - 1)
    return img[iy, ix]


def _quat_z(theta: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(theta / 2), np.zeros_like(theta), np.zeros_like(theta), np.sin(theta / 2)], axis=1)


def _contour_param(xq: np.ndarray, cx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segment index j and fraction s of ``xq`` along the monotone-ish x positions ``cx``."""
    j = np.clip(np.searchsorted(cx, xq) - 1, 0, len(cx) - 2)
    s = np.clip((xq - cx[j]) / np.maximum(cx[j + 1] - cx[j], 1e-9), 0, 1)
    return j, s


def _interp_contour_y(xq: np.ndarray, cont: np.ndarray) -> np.ndarray:
    j, s = _contour_param(xq, cont[:, 0])
    return cont[j, 1] * (1 - s) + cont[j + 1, 1] * s


# ----------------------------------------------------------------------------------------------------------
# Build
# ----------------------------------------------------------------------------------------------------------
class _Group:
    """Accumulates Gaussians (world units) of one kind with bindings."""

    def __init__(self) -> None:
        self.parts: list[dict[str, np.ndarray]] = []

    def add(self, **arrays: np.ndarray) -> None:
        self.parts.append(arrays)

    def cat(self) -> dict[str, np.ndarray]:
        keys = self.parts[0].keys()
        return {k: np.concatenate([p[k] for p in self.parts]) for k in keys}


def build_replica(
    photo: bytes | np.ndarray,
    replica_id: str = "replica",
    *,
    resolution: int = DEFAULT_RESOLUTION,
    target_psnr: float = 25.0,
    iterations: int = 150,
    extra_iterations: int = 300,
    batch_tiles: int = 64,
    face_spacing: float = 3.0,
    progress: Progress | None = None,
    source: str = "photo",
    seed: int = 0,
) -> Replica:
    """Build a replica from one photo (bytes or an RGB array). Raises InvalidInput for unusable photos."""
    t_start = time.perf_counter()

    def report(frac: float, msg: str) -> None:
        if progress is not None:
            progress(float(min(max(frac, 0.0), 1.0)), msg)

    report(0.0, "decoding photo")
    rgb = decode_photo(photo)
    report(0.02, "finding the face")
    lm_img = _detect(rgb)
    if lm_img is None:
        raise InvalidInput("no face found in the photo: use a well-lit, frontal photo of one face")
    portrait, aff = crop_portrait(rgb, lm_img, resolution)
    lm_px = L.detect_landmarks(portrait)
    if lm_px is None:  # fall back to the original detection, mapped into the crop
        lm_px = lm_img.copy()
        lm_px[:, :2] = lm_img[:, :2] @ aff[:, :2].T + aff[:, 2]
        lm_px[:, 2] = lm_img[:, 2] * aff[0, 0]
    R = resolution
    lm = lm_px / R  # world units
    design = design_rig(lm)
    fr = design.frame
    iod_px = fr.iod * R
    rng = np.random.default_rng(seed)
    report(0.05, "laying out Gaussians")

    # --- regions --------------------------------------------------------------------------------------
    oval = lm_px[list(L.FACE_OVAL), :2]
    face_mask = _poly_mask(oval, R, dilate_px=0.08 * iod_px)
    fw = lm[list(L.FACE_OVAL), 0].ptp()
    fh = lm[L.CHIN, 1] - lm[L.FOREHEAD_TOP, 1]
    head = {
        "center": [float(lm[list(L.FACE_OVAL), 0].mean()), float((lm[10, 1] + lm[152, 1]) / 2 - 0.1 * fh)],
        "radii": [float(0.8 * fw), float(0.8 * fh)],
        "falloff": 0.35,
    }
    ear_z = float((lm[234, 2] + lm[454, 2]) / 2)
    head["pivot"] = [head["center"][0], float((lm[234, 1] + lm[454, 1]) / 2 + 0.1 * fh), ear_z + 0.25 * fw]
    from services.renderer.replica.rig import head_weight_at

    yy, xx = np.mgrid[0:R, 0:R]
    head_field = head_weight_at(np.stack([(xx + 0.5) / R, (yy + 0.5) / R], -1), head)
    z_back = float(lm[:, 2].max())
    z_far = z_back + 0.5

    mouth_poly = np.concatenate([lm_px[list(L.LIP_INNER_UPPER), :2], lm_px[list(L.LIP_INNER_LOWER[::-1]), :2]])
    eye_polys = {name: np.concatenate([lm_px[list(up), :2], lm_px[list(lo[::-1]), :2]])
                 for name, (up, lo) in EYES.items()}

    # --- fitted Gaussians: init ------------------------------------------------------------------------
    import cv2

    target = portrait.astype(np.float32) / 255.0
    blur = {s: cv2.GaussianBlur(target, (0, 0), max(0.5 * s, 0.5)) for s in (face_spacing, 4.5, 9.0)}
    pts_f = _grid(R, face_spacing, rng)
    pts_f = pts_f[face_mask[pts_f[:, 1].astype(int), pts_f[:, 0].astype(int)]]
    pts_h = _grid(R, 4.5, rng)
    keep = (~face_mask[pts_h[:, 1].astype(int), pts_h[:, 0].astype(int)]) & (_sample(head_field, pts_h) > 0.5)
    pts_h = pts_h[keep]
    pts_b = _grid(R, 9.0, rng)
    hb = _sample(head_field, pts_b)
    pts_bg = pts_b[hb <= 0.5]
    pts_under = pts_b[hb > 0.02]

    # Depths only order the splats (head pose is an image warp): face Gaussians take the mesh depth; hair,
    # ears and neck continue the face-oval depth backwards; the under-layer is a plane behind the whole head
    # (a per-Gaussian depth order would let its big splats leak in front of the face); background far behind.
    oval_px = lm_px[list(L.FACE_OVAL)]

    def interp_z(pts: np.ndarray) -> np.ndarray:
        d2 = ((pts[:, None, :] - lm_px[None, :, :2]) ** 2).sum(-1)
        nn = np.argsort(d2, axis=1)[:, :3]
        w = 1.0 / (np.take_along_axis(d2, nn, 1) + 1.0)
        z = (lm[nn, 2] * w).sum(1) / w.sum(1)
        outside = ~face_mask[np.clip(pts[:, 1].astype(int), 0, R - 1), np.clip(pts[:, 0].astype(int), 0, R - 1)]
        if outside.any():
            d2o = ((pts[outside, None, :] - oval_px[None, :, :2]) ** 2).sum(-1)
            j = d2o.argmin(1)
            z[outside] = np.minimum(oval_px[j, 2] / R + 0.15 * np.sqrt(d2o[np.arange(len(j)), j]) / R, z_back)
        return z

    z_f = interp_z(pts_f)
    # Eye openings: iris in front, sclera slightly behind, both behind the lid sheet.
    for name, poly in eye_polys.items():
        inside = _points_in_poly(pts_f, poly)
        iris_c = lm_px[468 if name == "blink_right" else 473, :2]
        z_f[inside] += 0.03 * fr.iod
        z_f[inside & (np.linalg.norm(pts_f - iris_c, axis=1) < 0.12 * iod_px)] -= 0.06 * fr.iod
    in_mouth_f = _points_in_poly(pts_f, mouth_poly)
    z_f[in_mouth_f] += 0.02 * fr.iod
    z_h = interp_z(pts_h)
    z_bg = np.full(len(pts_bg), z_far)
    z_under = np.full(len(pts_under), z_back + 0.02)

    init_pts = np.concatenate([pts_f, pts_h, pts_bg])
    spacing = np.concatenate([np.full(len(pts_f), face_spacing), np.full(len(pts_h), 4.5), np.full(len(pts_bg), 9.0)])
    init_col = np.concatenate([_sample(blur[face_spacing], pts_f), _sample(blur[4.5], pts_h),
                               _sample(blur[9.0], pts_bg)])
    # High initial opacity: the face layer saturates early, so the CPU kernel stops before the layers behind.
    init_op = np.concatenate([np.full(len(pts_f), 0.97), np.full(len(pts_h), 0.97), np.full(len(pts_bg), 0.97)])
    init_z = np.concatenate([z_f, z_h, z_bg])
    kinds_fit = np.concatenate([np.full(len(pts_f) + len(pts_h), KIND_FACE),
                                np.full(len(pts_bg), KIND_COARSE)]).astype(np.uint8)
    # The under-layer is not fitted (it is hidden at rest): big, opaque, blurred photo colours.
    under = {
        "means": np.c_[pts_under / R, z_under],
        "log_scales": np.log(np.repeat([[0.75 * 9.0 / R, 0.75 * 9.0 / R, 0.5 * 9.0 / R]], len(pts_under), 0)),
        "quats": np.repeat([[1.0, 0, 0, 0]], len(pts_under), 0),
        "opacities": np.full(len(pts_under), 0.99),
        "colors": _sample(cv2.GaussianBlur(target, (0, 0), 6.0), pts_under),
    }

    # --- extras (frozen during the fit) ------------------------------------------------------------------
    extras = _extras(design, lm, portrait, R)
    extras = _prepend_plain(extras, under, KIND_COARSE)
    pts3 = extras["means"]
    cov2d = np.zeros((len(pts3), 2, 2))
    if len(pts3):
        from services.renderer.replica.rig import covariances

        cov2d = covariances(extras["log_scales"], extras["quats"])[:, :2, :2] * R * R
        # Sheets: shape from the rest quad (as the rig will compute it).
        cov2d[extras["sheet_mask"]] = _sheet_cov(design.points, extras)[:, :2, :2] * R * R
    op_ex = extras["opacities"] * extras["rest_gate"]
    conics_ex, radii_ex = conics_from_cov2d(cov2d, op_ex)
    frozen = {"means": pts3[:, :2] * R, "conics": conics_ex, "opacities": op_ex,
              "colors": extras["colors"], "depths": pts3[:, 2], "radii": radii_ex}

    # --- fit -----------------------------------------------------------------------------------------------
    x0, y0 = np.floor(lm_px[:, :2].min(0)).astype(int)
    x1, y1 = np.ceil(lm_px[:, :2].max(0)).astype(int)
    face_box = (max(x0, 0), max(y0, 0), min(x1, R), min(y1, R))
    nt = (R + 15) // 16
    tw = np.ones((nt, nt))
    tw[max(y0, 0) // 16:(min(y1, R) + 15) // 16, max(x0, 0) // 16:(min(x1, R) + 15) // 16] = 4.0
    report(0.08, f"fitting {len(init_pts)} Gaussians")
    fit = fit_gaussians(
        target, init_pts, np.log(np.repeat((0.55 * spacing)[:, None], 2, 1)), init_op, init_col, init_z, frozen,
        tw, face_box, iterations=iterations, extra_iterations=extra_iterations, target_psnr=target_psnr,
        batch_tiles=batch_tiles,
        progress=lambda f, m: report(0.08 + 0.82 * f, m), seed=seed,
    )
    report(0.9, "binding Gaussians to the rig")

    # --- assemble ------------------------------------------------------------------------------------------
    n_fit = len(fit.means)
    means_w = np.c_[fit.means / R, init_z]
    s = np.exp(fit.log_scales) / R
    log_scales = np.log(np.c_[s, 0.5 * s.min(1)])
    quats = _quat_z(fit.theta)
    bind_idx, bind_w = _bind(fit.means, lm_px, fr, R, mouth_poly, eye_polys, split_mask=kinds_fit == KIND_FACE)
    n_under = len(pts_under)
    extras["bind_idx"][:n_under], extras["bind_w"][:n_under] = _bind(
        pts_under, lm_px, fr, R, mouth_poly, eye_polys, split_mask=np.zeros(n_under, bool))
    arrays = {
        "means": np.concatenate([means_w, extras["means"]]).astype(np.float32),
        "log_scales": np.concatenate([log_scales, extras["log_scales"]]).astype(np.float32),
        "quats": np.concatenate([quats, extras["quats"]]).astype(np.float32),
        "opacities": np.concatenate([fit.opacities, extras["opacities"]]).astype(np.float32),
        "colors": np.concatenate([fit.colors, extras["colors"]]).astype(np.float32),
        "kind": np.concatenate([kinds_fit, extras["kind"]]).astype(np.uint8),
        "bind_idx": np.concatenate([bind_idx, extras["bind_idx"]]).astype(np.int32),
        "bind_w": np.concatenate([bind_w, extras["bind_w"]]).astype(np.float32),
        "sheet_uv": np.concatenate([np.zeros((n_fit, 2)), extras["sheet_uv"]]).astype(np.float32),
        "sheet_sigma": np.concatenate([np.zeros((n_fit, 2)), extras["sheet_sigma"]]).astype(np.float32),
        "gate_basis": np.concatenate([np.full(n_fit, -1), extras["gate_basis"]]).astype(np.int8),
        "gate_range": np.concatenate([np.zeros((n_fit, 2)), extras["gate_range"]]).astype(np.float32),
        "rig_points": design.points.astype(np.float32),
        "rig_bases": design.bases.astype(np.float32),
        "photo": portrait.astype(np.uint8),
    }
    from services.renderer.replica.rig import head_weight_at as hw

    arrays["head_weight"] = hw(arrays["means"][:, :2].astype(np.float64), head).astype(np.float32)
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "replica_id": replica_id,
        "bases": list(BASIS_NAMES),
        "virtual_points": design.virtual,
        "head": head,
        "face": {"box_px": [int(v) for v in face_box], "iod": fr.iod, "resolution": R},
        "conventions": {
            "blink_left": "the replica's own left eye (image right, MediaPipe 386/374)",
            "head_yaw": "positive turns the face towards image right",
            "head_pitch": "positive nods down",
            "head_roll": "positive tilts the top of the head towards image right",
        },
        "build": {
            "source": source,
            "gaussians": int(len(arrays["means"])),
            "fit_iterations": fit.iterations,
            "fit_seconds": round(fit.seconds, 2),
            "fit_psnr_face_db": round(fit.psnr_face, 2),
        },
    }
    replica = Replica(replica_id=replica_id, arrays=arrays, meta=meta)
    replica.validate()
    report(0.95, "checking the neutral render")
    from services.renderer.controls import Controls
    from services.renderer.raster.cpu import FullCpuRasterizer

    img = FullCpuRasterizer(replica, R).render(Controls())
    bx0, by0, bx1, by1 = face_box
    p = psnr(img[by0:by1, bx0:bx1] / 255.0, portrait[by0:by1, bx0:bx1] / 255.0)
    meta["build"]["psnr_face_db"] = round(p, 2)
    meta["build"]["seconds"] = round(time.perf_counter() - t_start, 2)
    report(1.0, f"done: {len(arrays['means'])} Gaussians, face PSNR {p:.1f} dB")
    return replica


# ----------------------------------------------------------------------------------------------------------
# Extras: mouth interior, teeth, eyelids, sclera
# ----------------------------------------------------------------------------------------------------------
def _sheet_cov(points: np.ndarray, ex: dict) -> np.ndarray:
    m = ex["sheet_mask"]
    q = points[ex["bind_idx"][m]]
    u, v = ex["sheet_uv"][m, 0:1], ex["sheet_uv"][m, 1:2]
    d_du = (1 - v) * (q[:, 1] - q[:, 0]) + v * (q[:, 3] - q[:, 2])
    d_dv = (1 - u) * (q[:, 2] - q[:, 0]) + u * (q[:, 3] - q[:, 1])
    a = d_du * ex["sheet_sigma"][m, 0:1]
    b = d_dv * ex["sheet_sigma"][m, 1:2]
    return a[:, :, None] * a[:, None, :] + b[:, :, None] * b[:, None, :] + np.eye(3) * 1e-9


def _extras(design, lm: np.ndarray, portrait: np.ndarray, R: int) -> dict:
    fr = design.frame
    pts = design.points
    img = portrait.astype(np.float32) / 255.0
    out: dict[str, list] = {k: [] for k in ("means", "log_scales", "quats", "opacities", "colors", "kind",
                                            "bind_idx", "bind_w", "sheet_uv", "sheet_sigma", "gate_basis",
                                            "gate_range", "rest_gate")}

    def add_sheet(top: list[int], bottom: list[int], nu: int, nv: int, v_range: tuple[float, float], kind: int,
                  color_fn, opacity: float, dz: float, gate: int = -1, gate_range=(0.0, 1.0)):
        for j in range(len(top) - 1):
            quad = [top[j], top[j + 1], bottom[j], bottom[j + 1]]
            for iu in range(nu):
                u = (iu + 0.5) / nu
                for iv in range(nv):
                    v = v_range[0] + (iv + 0.5) / nv * (v_range[1] - v_range[0])
                    w = np.array([(1 - u) * (1 - v), u * (1 - v), (1 - u) * v, u * v])
                    p = (w[:, None] * pts[quad]).sum(0)
                    p[2] += dz
                    out["means"].append(p)
                    out["log_scales"].append(np.log([1e-4, 1e-4, 1e-4]))
                    out["quats"].append([1.0, 0, 0, 0])
                    out["opacities"].append(opacity)
                    out["colors"].append(color_fn(j, u, v, p))
                    out["kind"].append(kind)
                    out["bind_idx"].append(quad)
                    out["bind_w"].append(w)
                    out["sheet_uv"].append([u, v])
                    out["sheet_sigma"].append([0.6 / nu, 0.6 * (v_range[1] - v_range[0]) / nv])
                    out["gate_basis"].append(gate)
                    out["gate_range"].append(gate_range)
                    out["rest_gate"].append(0.0 if gate >= 0 else 1.0)

    def add_blob(ids: list[int], weights: list[float], offset: np.ndarray, sigma_xy: tuple[float, float], kind: int,
                 color, opacity: float):
        base = sum(w * pts[i] for i, w in zip(ids, weights, strict=True))
        p = base + offset
        ids4 = (list(ids) + [ids[0]] * K_BIND)[:K_BIND]
        w4 = (list(weights) + [0.0] * K_BIND)[:K_BIND]
        out["means"].append(p)
        out["log_scales"].append(np.log([sigma_xy[0], sigma_xy[1], 0.5 * min(sigma_xy)]))
        out["quats"].append([1.0, 0, 0, 0])
        out["opacities"].append(opacity)
        out["colors"].append(color)
        out["kind"].append(kind)
        out["bind_idx"].append(ids4)
        out["bind_w"].append(w4)
        out["sheet_uv"].append([0.0, 0.0])
        out["sheet_sigma"].append([0.0, 0.0])
        out["gate_basis"].append(-1)
        out["gate_range"].append([0.0, 0.0])
        out["rest_gate"].append(1.0)

    iod = fr.iod
    up_in, lo_in = list(L.LIP_INNER_UPPER), list(L.LIP_INNER_LOWER)
    # Mouth interior: darker towards the middle.
    add_sheet(up_in, lo_in, 3, 5, (0.0, 1.0), KIND_MOUTH,
              lambda j, u, v, p: np.array([0.16, 0.05, 0.06]) * (0.55 + 0.45 * abs(2 * v - 1)),
              0.97, 0.08 * iod)
    # Teeth: a row just inside the upper lip, a fainter one above the lower lip (rigid with each lip).
    skin = np.median(img[_face_rows(lm, R)], axis=0)
    teeth_col = np.clip(np.array([0.92, 0.90, 0.84]) * (0.75 + 0.25 * float(skin.mean())), 0, 1)
    tooth_w = 0.045 * iod
    for row, (contour, dv, opac, span) in enumerate(((up_in, 0.055, 0.9, (2, 9)), (lo_in, -0.035, 0.45, (3, 8)))):
        for j in range(span[0], span[1]):
            for frac in (0.25, 0.75):
                a, b = contour[j - 1], contour[j]
                off = fr.vec(0.0, dv, 0.05)
                add_blob([a, b], [1 - frac, frac], off, (tooth_w, 0.035 * iod if row == 0 else 0.025 * iod),
                         KIND_TEETH, teeth_col * (1.0 if row == 0 else 0.85), opac)
    # Eyelids and sclera.
    for name, (upper, lower) in EYES.items():
        side = name.split("_")[1]
        tops = design.virtual[f"lid_top_{side}"]["ids"]
        gate = BASIS_NAMES.index(name)
        up_pts = lm[list(upper)]
        above = up_pts[:, :2] + fr.vec(0.0, -0.09)[None, :2]
        lid_cols = np.array([_sample(img, (a * R)[None])[0] for a in above])
        lid_cols = np.median(lid_cols, axis=0) * 0.5 + lid_cols * 0.5

        def lid_color(j, u, v, p, lid_cols=lid_cols):
            c = lid_cols[j] * (1 - u) + lid_cols[j + 1] * u
            shade = 1.0 - 0.12 * v
            if v > 0.8:
                shade *= 0.45  # lash line
            return np.clip(c * shade, 0, 1)

        add_sheet(tops, list(upper), 3, 5, (0.0, 1.0), KIND_LID, lid_color, 0.98, -0.04 * iod,
                  gate=gate, gate_range=(0.02, 0.2))
        eye_poly_px = np.concatenate([lm[list(upper), :2], lm[list(lower[::-1]), :2]]) * R
        m = _poly_mask_px(eye_poly_px, R)
        vals = img[m] if m.any() else img.reshape(-1, 3)
        lum = vals.mean(1)
        sclera = np.clip(vals[lum >= np.quantile(lum, 0.8)].mean(0), 0, 1)
        add_sheet(list(upper), list(lower), 2, 3, (0.0, 1.0), KIND_EYEBALL, lambda j, u, v, p, c=sclera: c, 1.0,
                  0.06 * iod)
    res = {k: np.asarray(v) for k, v in out.items()}
    res["means"] = res["means"].astype(np.float64).reshape(-1, 3)
    res["sheet_mask"] = np.isin(res["kind"], SHEET_KINDS)
    # Sheets: stored scales/quats describe the rest shape (the rig recomputes it every frame).
    if res["sheet_mask"].any():
        cov = _sheet_cov(pts, res)
        ev, evec = np.linalg.eigh(cov)
        ev = np.maximum(ev, 1e-10)
        rot = evec * np.sign(np.linalg.det(evec))[:, None, None]
        res["log_scales"][res["sheet_mask"]] = 0.5 * np.log(ev)
        res["quats"][res["sheet_mask"]] = _rotmat_to_quat(rot)
    return res


def _prepend_plain(ex: dict, plain: dict, kind: int) -> dict:
    """Extras with unbound-shape ("plain", not sheet, not gated) Gaussians ``plain`` put first."""
    n = len(plain["means"])
    out = dict(ex)
    for k in ("means", "log_scales", "quats", "opacities", "colors"):
        out[k] = np.concatenate([np.asarray(plain[k], dtype=np.float64).reshape(n, -1).squeeze(-1) if k == "opacities"
                                 else np.asarray(plain[k], dtype=np.float64), np.asarray(ex[k], dtype=np.float64)])
    out["kind"] = np.concatenate([np.full(n, kind), ex["kind"]])
    out["bind_idx"] = np.concatenate([np.zeros((n, K_BIND), np.int64), ex["bind_idx"]])
    out["bind_w"] = np.concatenate([np.zeros((n, K_BIND)), ex["bind_w"]])
    for k, width in (("sheet_uv", 2), ("sheet_sigma", 2), ("gate_range", 2)):
        out[k] = np.concatenate([np.zeros((n, width)), ex[k]])
    out["gate_basis"] = np.concatenate([np.full(n, -1), ex["gate_basis"]])
    out["rest_gate"] = np.concatenate([np.ones(n), ex["rest_gate"]])
    out["sheet_mask"] = np.concatenate([np.zeros(n, bool), ex["sheet_mask"]])
    return out


def _face_rows(lm: np.ndarray, R: int) -> np.ndarray:
    """Mask of cheek pixels (below the eyes, beside the nose) to estimate skin brightness."""
    mask = np.zeros((R, R), bool)
    for idx in (50, 280, 101, 330):
        x, y = (lm[idx, :2] * R).astype(int)
        mask[max(y - 3, 0):y + 4, max(x - 3, 0):x + 4] = True
    return mask


def _poly_mask_px(poly: np.ndarray, R: int) -> np.ndarray:
    return _poly_mask(poly, R)


def _rotmat_to_quat(r: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    q = Rotation.from_matrix(r).as_quat()  # xyzw
    return np.c_[q[:, 3], q[:, :3]]


# ----------------------------------------------------------------------------------------------------------
# Binding
# ----------------------------------------------------------------------------------------------------------
def _bind(means_px: np.ndarray, lm_px: np.ndarray, fr, R: int, mouth_poly: np.ndarray,
          eye_polys: dict[str, np.ndarray], split_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    n = len(means_px)
    idx = np.zeros((n, K_BIND), np.int64)
    w = np.zeros((n, K_BIND))
    done = np.zeros(n, bool)
    iod_px = fr.iod * R
    # Mouth opening: bind to the upper or lower inner lip (teeth move with their jaw).
    inside = _points_in_poly(means_px, mouth_poly)
    if split_mask is not None:
        inside &= split_mask
    if inside.any():
        up = np.array(L.LIP_INNER_UPPER)
        lo = np.array(L.LIP_INNER_LOWER)
        q = means_px[inside]
        ju, su = _contour_param(q[:, 0], lm_px[up, 0])
        jl, sl = _contour_param(q[:, 0], lm_px[lo, 0])
        yu = lm_px[up[ju], 1] * (1 - su) + lm_px[up[ju + 1], 1] * su
        yl = lm_px[lo[jl], 1] * (1 - sl) + lm_px[lo[jl + 1], 1] * sl
        t = (q[:, 1] - yu) / np.maximum(yl - yu, 1e-6)
        use_up = t < 0.55
        ii = np.flatnonzero(inside)
        idx[ii[use_up], 0], idx[ii[use_up], 1] = up[ju[use_up]], up[ju[use_up] + 1]
        w[ii[use_up], 0], w[ii[use_up], 1] = 1 - su[use_up], su[use_up]
        idx[ii[~use_up], 0], idx[ii[~use_up], 1] = lo[jl[~use_up]], lo[jl[~use_up] + 1]
        w[ii[~use_up], 0], w[ii[~use_up], 1] = 1 - sl[~use_up], sl[~use_up]
        done |= inside
    # Eye openings: iris pixels follow the iris, the rest stays with the eye corners.
    for name, poly in eye_polys.items():
        inside = _points_in_poly(means_px, poly) & ~done
        if split_mask is not None:
            inside &= split_mask
        if not inside.any():
            continue
        upper, _ = EYES[name]
        c = 468 if name == "blink_right" else 473
        ii = np.flatnonzero(inside)
        iris = np.linalg.norm(means_px[ii] - lm_px[c, :2], axis=1) < 0.12 * iod_px
        idx[ii[iris], 0] = c
        w[ii[iris], 0] = 1.0
        a, b = upper[0], upper[-1]
        xa, xb = lm_px[a, 0], lm_px[b, 0]
        s = np.clip((means_px[ii[~iris], 0] - xa) / (xb - xa), 0, 1)
        idx[ii[~iris], 0], idx[ii[~iris], 1] = a, b
        w[ii[~iris], 0], w[ii[~iris], 1] = 1 - s, s
        done |= inside
    # Skin: 4 nearest landmarks; near the lips and eyelids only those on the Gaussian's own side of the seam
    # (so the mouth and eyes can open without smearing skin across them). Coarse Gaussians are not split.
    rest = np.flatnonzero(~done)
    q = means_px[rest]
    seam_mouth = (lm_px[list(L.LIP_INNER_UPPER), :2] + lm_px[list(L.LIP_INNER_LOWER), :2]) / 2
    y_mouth = _interp_contour_y(q[:, 0], seam_mouth)
    above_mouth = q[:, 1] < y_mouth
    near_mouth = (q[:, 0] > lm_px[61, 0] - 0.04 * iod_px) & (q[:, 0] < lm_px[291, 0] + 0.04 * iod_px)
    near_mouth &= np.abs(q[:, 1] - y_mouth) < 0.6 * iod_px
    above_eye = np.zeros(len(q), bool)
    near_eye = np.zeros(len(q), bool)
    for upper, lower in EYES.values():
        seam = (lm_px[list(upper), :2] + lm_px[list(lower), :2]) / 2
        y_eye = _interp_contour_y(q[:, 0], seam)
        span = (q[:, 0] > seam[0, 0] - 0.03 * iod_px) & (q[:, 0] < seam[-1, 0] + 0.03 * iod_px)
        span &= np.abs(q[:, 1] - y_eye) < 0.4 * iod_px
        near_eye |= span
        above_eye |= span & (q[:, 1] < y_eye)
    if split_mask is not None:
        near_mouth &= split_mask[rest]
        near_eye &= split_mask[rest]
    # Side classes: 0 free, 1 above, 2 below.
    mouth_cls = np.where(near_mouth, np.where(above_mouth, 1, 2), 0)
    eye_cls = np.where(near_eye, np.where(above_eye, 1, 2), 0)
    for mc in (0, 1, 2):
        for ec in (0, 1, 2):
            sel = (mouth_cls == mc) & (eye_cls == ec)
            if not sel.any():
                continue
            excl = set(IRISES.tolist())
            if mc:
                excl |= set((LOWER_LIP if mc == 1 else UPPER_LIP).tolist())
            if ec:
                excl |= set((LOWER_LIDS if ec == 1 else UPPER_LIDS).tolist())
            cand = np.array([i for i in range(478) if i not in excl])
            cp = lm_px[cand, :2]
            qs = q[sel]
            ids_out = np.zeros((len(qs), K_BIND), np.int64)
            d_out = np.zeros((len(qs), K_BIND))
            for start in range(0, len(qs), 2048):
                blk = qs[start:start + 2048]
                d2 = ((blk[:, None, :] - cp[None]) ** 2).sum(-1)
                nn = np.argpartition(d2, K_BIND, axis=1)[:, :K_BIND]
                ids_out[start:start + 2048] = cand[nn]
                d_out[start:start + 2048] = np.sqrt(np.take_along_axis(d2, nn, 1))
            inv = 1.0 / (d_out ** 2 + (0.03 * iod_px) ** 2)
            ww = inv / inv.sum(1, keepdims=True)
            dmin = d_out.min(1) / iod_px
            atten = np.exp(-np.maximum(dmin - 0.03, 0) ** 2 / (2 * 0.08 ** 2))
            atten[dmin > 0.35] = 0.0
            rr = rest[sel]
            idx[rr] = ids_out
            w[rr] = ww * atten[:, None]
    w[w < 1e-4] = 0.0
    return idx, w
