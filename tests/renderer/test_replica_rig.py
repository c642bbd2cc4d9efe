"""The rig, measured independently: MediaPipe face mesh on rendered frames (no mocks)."""

from __future__ import annotations

import pytest

from services.renderer.controls import Controls


@pytest.fixture(scope="module")
def measured(face_renderer_factory, face_metrics):
    renderer = face_renderer_factory(size=512, backend="cpu")
    cache: dict[str, dict] = {}

    def get(name: str, controls: Controls) -> dict:
        if name not in cache:
            m = face_metrics(renderer.render(controls))
            assert m is not None, f"MediaPipe found no face in the {name} render"
            cache[name] = m
        return cache[name]

    return get


def test_neutral_is_a_face(measured):
    m = measured("neutral", Controls())
    assert 0.0 < m["eye_open"] < 1.0


def test_jaw_open_opens_the_mouth(measured):
    neutral = measured("neutral", Controls())["lip_gap"]
    half = measured("jaw0.5", Controls(jaw_open=0.5))["lip_gap"]
    full = measured("jaw1", Controls(jaw_open=1.0))["lip_gap"]
    assert half > neutral + 0.05, (neutral, half)
    assert full > half + 0.05, (half, full)


def test_smile_raises_and_frown_lowers_the_corners(measured):
    neutral = measured("neutral", Controls())["corner_lift"]
    assert measured("smile", Controls(smile=1.0))["corner_lift"] > neutral + 0.05
    assert measured("frown", Controls(smile=-1.0))["corner_lift"] < neutral - 0.05


def test_brow_raise_raises_the_brows(measured):
    neutral = measured("neutral", Controls())["brow_height"]
    assert measured("brow+", Controls(brow_raise=1.0))["brow_height"] > neutral + 0.06
    assert measured("brow-", Controls(brow_raise=-1.0))["brow_height"] < neutral - 0.02


def test_blink_closes_the_eyes(measured):
    neutral = measured("neutral", Controls())["eye_open"]
    closed = measured("blink", Controls(blink_left=1.0, blink_right=1.0))["eye_open"]
    assert closed < 0.6 * neutral, (neutral, closed)


def test_gaze_moves_the_irises(measured):
    right = measured("gaze+", Controls(gaze_x=1.0))["iris_x"]
    left = measured("gaze-", Controls(gaze_x=-1.0))["iris_x"]
    assert right > left + 5.0, (left, right)


def test_head_yaw_moves_the_face(measured):
    neutral = measured("neutral", Controls())["nose_x"]
    assert measured("yaw+", Controls(head_yaw=0.3))["nose_x"] > neutral + 15
    assert measured("yaw-", Controls(head_yaw=-0.3))["nose_x"] < neutral - 15
