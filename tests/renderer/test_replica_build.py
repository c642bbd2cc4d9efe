"""Building a replica from one photo: fidelity, progress reporting and bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
from PIL import Image

from parley.errors import InvalidInput
from services.renderer.controls import Controls
from services.renderer.replica.build import MAX_PHOTO_BYTES, build_replica, decode_photo
from services.renderer.replica.fit import psnr


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_neutral_render_matches_the_photo(astronaut_replica, face_renderer_factory):
    renderer = face_renderer_factory(size=512, backend="cpu")
    frame = renderer.render(Controls())
    photo = astronaut_replica.photo_at(512)
    x0, y0, x1, y1 = astronaut_replica.face_box(512)
    assert (x1 - x0) > 150 and (y1 - y0) > 150, "the face should fill a good part of the portrait"
    value = psnr(frame[y0:y1, x0:x1] / 255.0, photo[y0:y1, x0:x1] / 255.0)
    assert value >= 25.0, f"face-box PSNR {value:.1f} dB"
    assert astronaut_replica.meta["build"]["psnr_face_db"] >= 25.0


def test_build_metadata_and_structure(astronaut_replica):
    meta = astronaut_replica.meta
    assert meta["replica_id"] == "astronaut"
    assert "astronaut" in meta["build"]["source"]
    kinds = np.bincount(astronaut_replica.arrays["kind"], minlength=6)
    assert kinds[0] > 3000, "dense face Gaussians"
    assert kinds[2] > 0 and kinds[3] > 0 and kinds[4] > 0 and kinds[5] > 0, "mouth, teeth, lids, sclera"
    # Background is static, the face is bound.
    w = astronaut_replica.arrays["bind_w"].sum(1)
    assert (w == 0).sum() > 500 and (w > 0.99).sum() > 2000


def test_progress_is_reported_and_photo_bytes_work():
    """A quick, low-iteration build from PNG bytes exercises decoding and progress reporting."""
    photo = _png(skimage.data.astronaut())
    seen: list[tuple[float, str]] = []
    replica = build_replica(photo, "quick", iterations=5, extra_iterations=0, target_psnr=0.0,
                            progress=lambda f, m: seen.append((f, m)))
    fracs = [f for f, _ in seen]
    assert fracs[0] == 0.0 and fracs[-1] == 1.0
    assert all(b >= a for a, b in zip(fracs, fracs[1:], strict=False)), "progress must not go backwards"
    assert any("fitting" in m for _, m in seen)
    assert replica.replica_id == "quick" and replica.num_gaussians > 5000


@pytest.mark.parametrize("image", [
    np.full((480, 640, 3), 128, np.uint8),
    skimage.data.coffee(),
], ids=["flat-grey", "coffee"])
def test_photo_without_a_face_is_rejected(image):
    with pytest.raises(InvalidInput, match="no face found"):
        build_replica(_png(image), "noface")


def test_garbage_and_empty_bytes_are_rejected():
    with pytest.raises(InvalidInput, match="could not decode"):
        build_replica(b"\x00\x01 this is not an image" * 100, "garbage")
    with pytest.raises(InvalidInput, match="could not decode"):
        build_replica(_png(skimage.data.astronaut())[:400], "truncated")
    with pytest.raises(InvalidInput, match="empty"):
        build_replica(b"", "empty")


def test_huge_photos_are_rejected_before_decoding():
    with pytest.raises(InvalidInput, match="MB; the limit is 20 MB"):
        decode_photo(b"\xff" * (MAX_PHOTO_BYTES + 1))
    # A small file that declares 5000x4000 pixels (a decompression bomb) is refused from its header.
    buf = io.BytesIO()
    Image.new("L", (5000, 4000)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 1_000_000
    with pytest.raises(InvalidInput, match="5000x4000 pixels; the limit is 4096x4096"):
        build_replica(buf.getvalue(), "huge")
    with pytest.raises(InvalidInput, match="limit is 4096x4096"):
        decode_photo(np.zeros((4200, 4200, 3), np.uint8))
    with pytest.raises(InvalidInput, match="at least 64x64"):
        decode_photo(_png(np.zeros((32, 32, 3), np.uint8)))
