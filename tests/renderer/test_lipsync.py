"""Lip sync and expressions of *rendered* frames, measured by an independent model (MediaPipe face mesh).

The reply is spoken by the real TTS backend (hibari, duration-predictor phoneme timings), driven into
Controls at 30 fps, rendered by the replica's rasterizer, and every frame goes through MediaPipe's face
mesh. The mouth opening per frame (inner-lip landmarks 13/14, normalised by the outer eye-corner distance
33-263) must follow the audio envelope (per-frame RMS): best cross-correlation lag within one frame and
correlation >= 0.5.
"""

from __future__ import annotations

import numpy as np
import pytest

from services.renderer.controls import Controls
from services.renderer.driving import DrivingOptions, SpeechTrack, speech_controls
from services.renderer.driving.emotion import EMOTION_OFFSETS, Emotion

pytestmark = pytest.mark.models

FPS = 30
SIZE = 384  # MediaPipe landmarks get noisy on small faces
TEXT = (
    "Good morning! I was hoping that we could talk about your garden, and what you want to plant there. "
    "The weather should be lovely this afternoon."
)


@pytest.fixture(scope="module")
def face(face_renderer_factory):
    return face_renderer_factory(size=SIZE, backend="cpu")


@pytest.fixture(scope="module")
def mesh():
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                                         min_detection_confidence=0.3) as m:
        yield m


def landmarks(mesh, image: np.ndarray) -> np.ndarray | None:
    result = mesh.process(np.ascontiguousarray(image))
    if not result.multi_face_landmarks:
        return None
    h, w = image.shape[:2]
    return np.array([[p.x * w, p.y * h] for p in result.multi_face_landmarks[0].landmark])


def eye_distance(pts: np.ndarray) -> float:
    return float(np.linalg.norm(pts[33] - pts[263]))


def mouth_opening(pts: np.ndarray) -> float:
    return float(np.linalg.norm(pts[13] - pts[14])) / eye_distance(pts)


def frame_rms(audio: np.ndarray, rate: int, n: int) -> np.ndarray:
    half = rate // FPS // 2
    centres = [round(k * rate / FPS) for k in range(n)]
    return np.array([np.sqrt(np.mean(np.square(audio[max(0, c - half) : c + half]))) for c in centres])


def best_lag(x: np.ndarray, y: np.ndarray, max_lag: int = 4) -> tuple[int, float, dict]:
    n = min(len(x), len(y))
    scores = {}
    for lag in range(-max_lag, max_lag + 1):
        a = x[max(0, lag) : n + min(0, lag)]
        b = y[max(0, -lag) : n - max(0, lag)]
        scores[lag] = float(np.corrcoef(a, b)[0, 1])
    lag = max(scores, key=scores.get)
    return lag, scores[lag], scores


def test_rendered_mouth_follows_the_speech(face, mesh):
    from services.tts.backends.hibari_backend import HibariBackend
    from services.tts.config import HibariConfig

    tts = HibariBackend(HibariConfig())
    tts.load()
    syn = tts.synthesize(TEXT, 1.0)
    track = SpeechTrack(syn.sample_rate, DrivingOptions(fps=FPS))
    track.add_audio(syn.audio)
    track.add_timings(syn.phonemes, syn.words)
    controls = speech_controls(track)
    openings = []
    for c in controls:
        pts = landmarks(mesh, face.render(c))
        openings.append(np.nan if pts is None else mouth_opening(pts))
    openings = np.array(openings)
    detected = np.isfinite(openings)
    assert detected.mean() >= 0.95, f"face mesh found the face in only {detected.mean():.0%} of frames"
    openings = np.where(detected, openings, np.nanmedian(openings))
    rms = frame_rms(syn.audio, syn.sample_rate, len(openings))
    lag, corr, scores = best_lag(openings, rms)
    print(f"\nlip sync: best lag {lag} frames, correlation {corr:.3f} (lags: "
          + ", ".join(f"{k}:{v:.2f}" for k, v in scores.items()) + ")")
    assert abs(lag) <= 1, scores
    assert corr >= 0.5, scores
    assert openings.max() - np.percentile(openings, 10) > 0.05  # visibly opens


def test_emotions_show_on_rendered_faces(face, mesh):
    """Joy raises the mouth corners, surprise the brows; sorrow lowers the corners, anger the brows."""

    def measure(controls: Controls) -> tuple[float, float]:
        pts = landmarks(mesh, face.render(controls))
        assert pts is not None
        scale = eye_distance(pts)
        eye_y = (pts[33, 1] + pts[263, 1] + pts[133, 1] + pts[362, 1]) / 4
        lip_mid_y = (pts[13, 1] + pts[14, 1]) / 2
        corners = (lip_mid_y - (pts[61, 1] + pts[291, 1]) / 2) / scale  # > 0: corners above the lip centre
        brows = (eye_y - pts[[70, 63, 105, 66, 107, 300, 293, 334, 296, 336], 1].mean()) / scale  # brow height
        return corners, brows

    neutral = measure(Controls())
    joy = measure(EMOTION_OFFSETS[Emotion.JOY])
    surprise = measure(EMOTION_OFFSETS[Emotion.SURPRISE])
    sorrow = measure(EMOTION_OFFSETS[Emotion.SORROW])
    anger = measure(EMOTION_OFFSETS[Emotion.ANGER])
    print(f"\ncorners/brows: neutral {neutral}, joy {joy}, surprise {surprise}, sorrow {sorrow}, anger {anger}")
    assert joy[0] > neutral[0] + 0.02
    assert surprise[1] > neutral[1] + 0.02
    assert sorrow[0] < neutral[0] - 0.01
    assert anger[1] < neutral[1] - 0.01
