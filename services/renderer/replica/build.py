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
import time
from collections.abc import Callable

import numpy as np

from parley.errors import InvalidInput
from services.renderer.raster.base import conics_from_cov2d
from services.renderer.replica import landmarks as L
from services.renderer.replica.extras import bind, photo_extras, prepend_plain, sheet_cov
from services.renderer.replica.fit import fit_gaussians, psnr
from services.renderer.replica.format import (
    BASIS_NAMES,
    FORMAT_NAME,
    FORMAT_VERSION,
    KIND_COARSE,
    KIND_FACE,
    Replica,
)
from services.renderer.replica.geometry import (
    grid,
    points_in_poly,
    poly_mask,
    quat_z,
    sample,
)
from services.renderer.replica.rig_design import EYES, design_rig

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
    face_mask = poly_mask(oval, R, dilate_px=0.08 * iod_px)
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
    pts_f = grid(R, face_spacing, rng)
    pts_f = pts_f[face_mask[pts_f[:, 1].astype(int), pts_f[:, 0].astype(int)]]
    pts_h = grid(R, 4.5, rng)
    keep = (~face_mask[pts_h[:, 1].astype(int), pts_h[:, 0].astype(int)]) & (sample(head_field, pts_h) > 0.5)
    pts_h = pts_h[keep]
    pts_b = grid(R, 9.0, rng)
    hb = sample(head_field, pts_b)
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
        inside = points_in_poly(pts_f, poly)
        iris_c = lm_px[468 if name == "blink_right" else 473, :2]
        z_f[inside] += 0.03 * fr.iod
        z_f[inside & (np.linalg.norm(pts_f - iris_c, axis=1) < 0.12 * iod_px)] -= 0.06 * fr.iod
    in_mouth_f = points_in_poly(pts_f, mouth_poly)
    z_f[in_mouth_f] += 0.02 * fr.iod
    z_h = interp_z(pts_h)
    z_bg = np.full(len(pts_bg), z_far)
    z_under = np.full(len(pts_under), z_back + 0.02)

    init_pts = np.concatenate([pts_f, pts_h, pts_bg])
    spacing = np.concatenate([np.full(len(pts_f), face_spacing), np.full(len(pts_h), 4.5), np.full(len(pts_bg), 9.0)])
    init_col = np.concatenate([sample(blur[face_spacing], pts_f), sample(blur[4.5], pts_h),
                               sample(blur[9.0], pts_bg)])
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
        "colors": sample(cv2.GaussianBlur(target, (0, 0), 6.0), pts_under),
    }

    # --- extras (frozen during the fit) ------------------------------------------------------------------
    extras = photo_extras(design, lm, portrait, R)
    extras = prepend_plain(extras, under, KIND_COARSE)
    pts3 = extras["means"]
    cov2d = np.zeros((len(pts3), 2, 2))
    if len(pts3):
        from services.renderer.replica.rig import covariances

        cov2d = covariances(extras["log_scales"], extras["quats"])[:, :2, :2] * R * R
        # Sheets: shape from the rest quad (as the rig will compute it).
        cov2d[extras["sheet_mask"]] = sheet_cov(design.points, extras)[:, :2, :2] * R * R
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
    quats = quat_z(fit.theta)
    bind_idx, bind_w = bind(fit.means, lm_px, fr, R, mouth_poly, eye_polys, split_mask=kinds_fit == KIND_FACE)
    n_under = len(pts_under)
    extras["bind_idx"][:n_under], extras["bind_w"][:n_under] = bind(
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
