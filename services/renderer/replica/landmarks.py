"""MediaPipe face-mesh landmarks (478 points with irises) and their semantics for the rig.

Index sets below follow MediaPipe's canonical face mesh. "Right"/"left" are the *subject's* sides as
MediaPipe names them: the subject's right eye appears on the image left.
"""

from __future__ import annotations

import threading

import numpy as np

N_LANDMARKS = 478

# Ordered contours (left to right in the image for a frontal face).
LIP_OUTER_UPPER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LIP_OUTER_LOWER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
LIP_INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIP_INNER_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
MOUTH_CORNERS = (61, 291, 78, 308)

# Subject's right eye (image left): corners 33 (outer) .. 133 (inner).
RIGHT_EYE_UPPER = (33, 246, 161, 160, 159, 158, 157, 173, 133)
RIGHT_EYE_LOWER = (33, 7, 163, 144, 145, 153, 154, 155, 133)
# Subject's left eye (image right): corners 362 (inner) .. 263 (outer), ordered left to right in the image.
LEFT_EYE_UPPER = (362, 398, 384, 385, 386, 387, 388, 466, 263)
LEFT_EYE_LOWER = (362, 382, 381, 380, 374, 373, 390, 249, 263)

RIGHT_BROW = (46, 53, 52, 65, 55, 70, 63, 105, 66, 107)
LEFT_BROW = (276, 283, 282, 295, 285, 300, 293, 334, 296, 336)
RIGHT_IRIS = (468, 469, 470, 471, 472)   # 468 is the centre
LEFT_IRIS = (473, 474, 475, 476, 477)    # 473 is the centre

FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
CHIN = 152
NOSE_TIP = 1
FOREHEAD_TOP = 10


class _Mesh:
    """One shared static-image FaceMesh (MediaPipe graphs are not re-entrant)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mesh = None

    def detect(self, rgb: np.ndarray) -> np.ndarray | None:
        import mediapipe as mp

        with self._lock:
            if self._mesh is None:
                self._mesh = mp.solutions.face_mesh.FaceMesh(
                    static_image_mode=True, refine_landmarks=True, max_num_faces=1, min_detection_confidence=0.5
                )
            result = self._mesh.process(np.ascontiguousarray(rgb))
        if not result.multi_face_landmarks:
            return None
        h, w = rgb.shape[:2]
        pts = np.array([[p.x, p.y, p.z] for p in result.multi_face_landmarks[0].landmark], dtype=np.float64)
        if pts.shape[0] != N_LANDMARKS:
            return None
        # Pixel coordinates; MediaPipe's z uses roughly the same scale as x.
        return pts * np.array([w, h, w])


_MESH = _Mesh()


def detect_landmarks(rgb: np.ndarray) -> np.ndarray | None:
    """(478, 3) landmarks in pixel units (x right, y down, z away from the camera) or None if no face."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError("detect_landmarks needs an (H, W, 3) uint8 RGB image")
    return _MESH.detect(rgb)
