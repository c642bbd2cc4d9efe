"""The replica file format (version 1): Gaussians plus a landmark rig, one ``.npz`` file per replica.

Coordinates
    World units are the square portrait the replica was built from: ``x`` right and ``y`` down in
    ``[0, 1]``, ``z`` away from the camera in the same units (MediaPipe's depth scale). A rasterizer
    renders orthographically: pixel ``(x * size, y * size)``, pixel centres at ``i + 0.5``.

Why 3D Gaussians from a single photo
    Every Gaussian is a full 3D Gaussian (mean, log-scales, unit quaternion ``wxyz``) so that the same
    data feeds gsplat and the CPU rasterizer alike. Built from one photo, they are flat discs facing the
    camera (rotation about ``z`` only, a thin ``z`` scale) with depths taken from the face mesh: the
    representation is 2.5D, which is what a single view can support: depth orders the splats (nose
    before cheeks, lips before the mouth interior, lids before the eyes). Head pose is rendered as a
    smooth image warp derived from the 3D rotation of the landmarks about ``meta["head"]["pivot"]``
    (``raster.base.HeadWarp``), because a single photo has nothing behind the silhouette that a true 3D
    rotation would reveal; ``Rig.pose(head=True)`` still rotates the splats in 3D for experiments.

Arrays (``N`` Gaussians, ``P`` rig points, ``B`` displacement bases, ``K = 4`` bindings per Gaussian)
    ``means`` (N,3) f32 · ``log_scales`` (N,3) f32 · ``quats`` (N,4) f32 wxyz · ``opacities`` (N,) f32
    in [0,1] · ``colors`` (N,3) f32 RGB in [0,1] · ``kind`` (N,) u8 (see :data:`KINDS`).

    Rig:
    ``rig_points`` (P,3) f32: rest positions. The first 478 are MediaPipe face-mesh landmarks of the
    portrait; the rest are virtual points (e.g. copies of the upper eyelids that ignore blinking, used as
    the fixed top edge of the eyelid sheets), described in ``meta["virtual_points"]``.
    ``rig_bases`` (B,P,3) f32: per-basis rig-point displacements at full strength; ``meta["bases"]`` names
    them and :func:`basis_coefficients` maps :class:`Controls` to coefficients (signed controls such as
    ``smile`` have one basis per sign).
    ``bind_idx`` (N,K) i32 / ``bind_w`` (N,K) f32: each Gaussian's mean moves by
    ``sum_k bind_w[k] * (rig_point[bind_idx[k]] - rest[bind_idx[k]])``. Weights sum to 1 on the face and
    fall to 0 away from it (static background).
    ``sheet_uv`` (N,2) / ``sheet_sigma`` (N,2) f32: for ``kind`` in :data:`SHEET_KINDS` the four bound
    points are a quad (top-left, top-right, bottom-left, bottom-right) and the Gaussian's covariance
    is rebuilt each frame from the quad's current shape: axes ``dP/du * sigma_u`` and ``dP/dv * sigma_v``
    at ``(u, v) = sheet_uv``. This is how the mouth interior grows as the jaw opens and eyelids unfold.
    ``gate_basis`` (N,) i8 / ``gate_range`` (N,2) f32: opacity multiplied by
    ``clip((coef[gate_basis] - lo) / (hi - lo), 0, 1)``; ``-1`` means always visible.
    ``head_weight`` (N,) f32 in [0,1]: how much the head's rigid transform moves the Gaussian.
    ``photo`` (R,R,3) u8: the portrait the Gaussians were fitted to.

Metadata (JSON in the ``meta`` entry, UTF-8 bytes)
    ``format`` = "parley-replica", ``version`` = :data:`FORMAT_VERSION`, ``replica_id``, ``bases``,
    ``head`` (pivot, ellipse), ``face`` (box, inter-ocular distance), ``build`` (source, seconds, PSNR).

A file that is not a readable archive, lacks an array, has a wrong shape/dtype, non-finite values or
another version raises :class:`parley.errors.InvalidInput`.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parley.errors import InvalidInput
from services.renderer.controls import Controls

FORMAT_NAME = "parley-replica"
FORMAT_VERSION = 1
K_BIND = 4

# Gaussian kinds.
KIND_FACE = 0        # fitted, fine, on the face and head
KIND_COARSE = 1      # fitted, coarse: background and the under-layer that fills stretched skin
KIND_MOUTH = 2       # mouth interior (dark), behind the lips
KIND_TEETH = 3       # teeth hint, behind the lips
KIND_LID = 4         # eyelid sheet that unfolds over the eye on blink
KIND_EYEBALL = 5     # sclera backdrop revealed when the iris moves
KINDS = {KIND_FACE: "face", KIND_COARSE: "coarse", KIND_MOUTH: "mouth", KIND_TEETH: "teeth", KIND_LID: "lid",
         KIND_EYEBALL: "eyeball"}
SHEET_KINDS = (KIND_MOUTH, KIND_LID, KIND_EYEBALL)

# Displacement bases, in storage order; signed controls have one basis per sign.
BASIS_NAMES: tuple[str, ...] = (
    "jaw_open", "lip_round", "lip_stretch", "lip_press", "smile+", "smile-", "brow_raise+", "brow_raise-",
    "blink_left", "blink_right", "gaze_x", "gaze_y",
)


def basis_coefficients(controls: Controls) -> np.ndarray:
    """Coefficients (B,) of :data:`BASIS_NAMES` for ``controls`` (clamped to their ranges)."""
    c = controls.clamped()
    return np.array([
        c.jaw_open, c.lip_round, c.lip_stretch, c.lip_press, max(c.smile, 0.0), max(-c.smile, 0.0),
        max(c.brow_raise, 0.0), max(-c.brow_raise, 0.0), c.blink_left, c.blink_right, c.gaze_x, c.gaze_y,
    ], dtype=np.float32)


_SPEC: dict[str, tuple[str, tuple[str | int, ...]]] = {
    # name: (dtype, shape with symbolic dims)
    "means": ("float32", ("N", 3)),
    "log_scales": ("float32", ("N", 3)),
    "quats": ("float32", ("N", 4)),
    "opacities": ("float32", ("N",)),
    "colors": ("float32", ("N", 3)),
    "kind": ("uint8", ("N",)),
    "bind_idx": ("int32", ("N", K_BIND)),
    "bind_w": ("float32", ("N", K_BIND)),
    "sheet_uv": ("float32", ("N", 2)),
    "sheet_sigma": ("float32", ("N", 2)),
    "gate_basis": ("int8", ("N",)),
    "gate_range": ("float32", ("N", 2)),
    "head_weight": ("float32", ("N",)),
    "rig_points": ("float32", ("P", 3)),
    "rig_bases": ("float32", ("B", "P", 3)),
    "photo": ("uint8", ("R", "R", 3)),
}


@dataclass
class Replica:
    """A loaded replica: Gaussians, rig and metadata (see the module docstring)."""

    replica_id: str
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    # Convenience views.
    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays")
        if arrays is not None and name in arrays:
            return arrays[name]
        raise AttributeError(name)

    @property
    def num_gaussians(self) -> int:
        return int(self.arrays["means"].shape[0])

    @property
    def landmarks(self) -> np.ndarray:
        """(478, 3) rest landmarks in world units."""
        return self.arrays["rig_points"][:478]

    @property
    def resolution(self) -> int:
        return int(self.arrays["photo"].shape[0])

    def face_box(self, size: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) pixel box of the face landmarks at render ``size``."""
        lm = self.landmarks[:, :2] * size
        x0, y0 = np.floor(lm.min(0)).astype(int)
        x1, y1 = np.ceil(lm.max(0)).astype(int)
        return max(0, x0), max(0, y0), min(size, x1), min(size, y1)

    def photo_at(self, size: int) -> np.ndarray:
        """The portrait resized to ``size`` (area / bicubic)."""
        import cv2

        photo = self.arrays["photo"]
        if photo.shape[0] == size:
            return photo.copy()
        interp = cv2.INTER_AREA if size < photo.shape[0] else cv2.INTER_CUBIC
        return cv2.resize(photo, (size, size), interpolation=interp)

    def validate(self) -> None:
        validate_arrays(self.arrays, self.meta)

    def equals(self, other: Replica) -> bool:
        if self.replica_id != other.replica_id or set(self.arrays) != set(other.arrays):
            return False
        def norm(meta: dict[str, Any]) -> str:
            return json.dumps({k: v for k, v in meta.items() if k not in ("format", "version", "replica_id")},
                              sort_keys=True)

        if norm(self.meta) != norm(other.meta):
            return False
        return all(np.array_equal(self.arrays[k], other.arrays[k]) for k in self.arrays)


def validate_arrays(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Raise InvalidInput unless ``arrays`` match the version-1 layout."""
    dims: dict[str, int] = {}
    for name, (dtype, shape) in _SPEC.items():
        if name not in arrays:
            raise InvalidInput(f"replica file lacks array {name!r}")
        arr = arrays[name]
        if str(arr.dtype) != dtype:
            raise InvalidInput(f"replica array {name!r} has dtype {arr.dtype}, expected {dtype}")
        if arr.ndim != len(shape):
            raise InvalidInput(f"replica array {name!r} has shape {arr.shape}, expected {shape}")
        for got, want in zip(arr.shape, shape, strict=True):
            if isinstance(want, int):
                if got != want:
                    raise InvalidInput(f"replica array {name!r} has shape {arr.shape}, expected {shape}")
            elif dims.setdefault(want, got) != got:
                raise InvalidInput(f"replica array {name!r} has shape {arr.shape}: {want} should be {dims[want]}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InvalidInput(f"replica array {name!r} holds non-finite values")
    n, p, b = dims["N"], dims["P"], dims["B"]
    if n == 0:
        raise InvalidInput("replica has no Gaussians")
    if p < 478:
        raise InvalidInput(f"replica rig has {p} points; the first 478 must be face-mesh landmarks")
    if b != len(meta.get("bases", ())):
        raise InvalidInput(f"replica has {b} rig bases but its metadata names {len(meta.get('bases', ()))}")
    idx = arrays["bind_idx"]
    if idx.min() < 0 or idx.max() >= p:
        raise InvalidInput("replica binding indices are out of range")
    gate = arrays["gate_basis"]
    if gate.min() < -1 or gate.max() >= b:
        raise InvalidInput("replica gate bases are out of range")


def to_bytes(replica: Replica) -> bytes:
    """Serialise (validating first)."""
    replica.validate()
    meta = dict(replica.meta)
    meta.update(format=FORMAT_NAME, version=FORMAT_VERSION, replica_id=replica.replica_id)
    buf = io.BytesIO()
    payload = {k: np.ascontiguousarray(v) for k, v in replica.arrays.items()}
    payload["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    np.savez(buf, **payload)
    return buf.getvalue()


def from_bytes(data: bytes, *, source: str = "replica") -> Replica:
    """Parse and validate; any problem is InvalidInput naming ``source``."""
    if not data:
        raise InvalidInput(f"{source}: empty replica file")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            names = list(npz.files)
            if "meta" not in names:
                raise InvalidInput(f"{source}: not a Parley replica (no metadata entry)")
            arrays = {k: npz[k] for k in names}
    except InvalidInput:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, RuntimeError) as exc:
        raise InvalidInput(f"{source}: corrupt or truncated replica file ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # zlib.error and friends: still a damaged file
        raise InvalidInput(f"{source}: corrupt replica file ({type(exc).__name__}: {exc})") from exc
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{source}: replica metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise InvalidInput(f"{source}: not a Parley replica (format {fmt!r})")
    version = meta.get("version")
    if version != FORMAT_VERSION:
        raise InvalidInput(
            f"{source}: replica format version {version!r} is not supported "
            f"(this build reads version {FORMAT_VERSION}); rebuild the replica from its photo"
        )
    replica_id = meta.get("replica_id")
    if not isinstance(replica_id, str) or not replica_id:
        raise InvalidInput(f"{source}: replica metadata lacks replica_id")
    replica = Replica(replica_id=replica_id, arrays=arrays, meta=meta)
    try:
        replica.validate()
    except InvalidInput as exc:
        raise InvalidInput(f"{source}: {exc}") from exc
    return replica


def save(replica: Replica, path: str | Path) -> Path:
    """Write atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(to_bytes(replica))
    tmp.replace(path)
    return path


def load(path: str | Path) -> Replica:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    return from_bytes(data, source=str(path))
