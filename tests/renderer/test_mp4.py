"""MP4 writing: H.264 + AAC that decode, with the right duration and audio aligned to video (checked by decoding)."""

from __future__ import annotations

import av
import numpy as np
import pytest

from services.renderer.mp4 import write_mp4

FPS = 30


def pattern(frames: int, flashes: list[int], rate: int, size: int = 96):
    """Dark frames with white flash frames, and silence with a 1 kHz beep starting at each flash's time."""
    video = [np.full((size, size, 3), 255 if i in flashes else 30, np.uint8) for i in range(frames)]
    audio = np.zeros(round(frames * rate / FPS), np.float32)
    beep = round(0.1 * rate)
    for i in flashes:
        start = round(i * rate / FPS)
        audio[start : start + beep] = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(beep) / rate)
    return video, audio


def decode(path):
    """(video frame times, video frames as gray means, audio samples, audio start time, rate, container info)."""
    with av.open(str(path)) as c:
        info = {
            "duration": c.duration / 1e6,
            "video_codec": c.streams.video[0].codec_context.name,
            "audio_codec": c.streams.audio[0].codec_context.name,
            "channels": c.streams.audio[0].codec_context.channels,
            "rate": c.streams.audio[0].codec_context.sample_rate,
            "pix_fmt": c.streams.video[0].codec_context.pix_fmt,
        }
        times, levels = [], []
        for frame in c.decode(video=0):
            times.append(float(frame.time))
            levels.append(float(frame.to_ndarray(format="gray").mean()))
    with av.open(str(path)) as c:
        chunks, start = [], None
        for frame in c.decode(audio=0):
            if start is None:
                start = float(frame.time)
            chunks.append(frame.to_ndarray().reshape(-1))
    return np.array(times), np.array(levels), np.concatenate(chunks), start, info


def onsets(audio: np.ndarray, rate: int, threshold: float = 0.1) -> list[float]:
    """Start times (s) of the loud bursts in ``audio``."""
    loud = np.abs(audio) > threshold
    idx = np.flatnonzero(loud)
    starts = [idx[0]] + [b for a, b in zip(idx, idx[1:], strict=False) if b - a > rate // 20]
    return [s / rate for s in starts]


@pytest.mark.parametrize("rate", [16_000, 24_000, 48_000])
def test_flash_and_beep_line_up_after_decoding(tmp_path, rate):
    flashes = [20, 65]
    video, audio = pattern(90, flashes, rate)
    path = write_mp4(tmp_path / "pattern.mp4", iter(video), FPS, audio, rate)
    times, levels, decoded, start, info = decode(path)
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac" and info["pix_fmt"] == "yuv420p"
    assert info["channels"] == 1 and info["rate"] == rate
    assert len(times) == 90 and info["duration"] == pytest.approx(3.0, abs=0.05)
    assert start == pytest.approx(0.0, abs=1e-6)
    assert len(decoded) / rate == pytest.approx(3.0, abs=0.05)  # mono stays mono: no doubled duration
    flash_times = [float(times[i]) for i in np.flatnonzero(levels > 200)]
    beep_times = [start + t for t in onsets(decoded, rate)]
    assert flash_times == pytest.approx([i / FPS for i in flashes], abs=1e-3)
    assert len(beep_times) == len(flash_times)
    offsets_ms = [1e3 * (b - f) for b, f in zip(beep_times, flash_times, strict=True)]
    # AAC priming compensated: well within one frame (33 ms); uncompensated it is 21-64 ms late
    assert max(abs(o) for o in offsets_ms) < 5.0, offsets_ms


def test_odd_sizes_and_no_audio(tmp_path):
    frames = [np.full((51, 75, 3), i * 8, np.uint8) for i in range(10)]
    path = write_mp4(tmp_path / "odd.mp4", frames, 25)
    with av.open(str(path)) as c:
        assert len(c.streams.audio) == 0
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == 10 and decoded[0].shape == (52, 76, 3)
    with pytest.raises(ValueError):
        write_mp4(tmp_path / "empty.mp4", [], 30)


@pytest.mark.models
def test_render_reply_mp4_lip_syncs_through_the_codec(tmp_path, astronaut_replica):
    """A whole TTS reply rendered offline: H.264 + AAC, right length, and in the *decoded* file the mouth
    (MediaPipe landmarks 13/14) still follows the decoded audio's envelope at lag 0 +- 1 frame."""
    import mediapipe as mp

    from services.renderer.mp4 import render_reply_mp4
    from services.tts.backends.hibari_backend import HibariBackend
    from services.tts.config import HibariConfig

    tts = HibariBackend(HibariConfig())
    tts.load()
    syn = tts.synthesize("Hello! I am happy to help you plan a wonderful trip to Paris this summer.", 1.0)
    path = render_reply_mp4(astronaut_replica, syn.audio, syn.sample_rate, syn.words, syn.phonemes,
                            tmp_path / "reply.mp4", emotion="joy", intensity=0.6, size=320)
    duration = len(syn.audio) / syn.sample_rate
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.audio[0].codec_context.name == "aac"
        assert c.duration / 1e6 == pytest.approx(duration + 0.3, abs=0.05)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == int(np.ceil((duration + 0.3) * FPS))
    _, _, audio, start, info = decode(path)
    assert start == pytest.approx(0.0, abs=1e-6) and info["rate"] == syn.sample_rate
    rate = syn.sample_rate
    half = rate // FPS // 2
    centres = [round(k * rate / FPS) for k in range(len(frames))]
    rms = np.array([np.sqrt(np.mean(np.square(audio[max(0, c - half) : c + half]))) for c in centres])
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as mesh:
        opening = []
        for frame in frames:
            lm = mesh.process(frame).multi_face_landmarks[0].landmark
            gap = np.hypot(lm[13].x - lm[14].x, lm[13].y - lm[14].y)
            opening.append(gap / np.hypot(lm[33].x - lm[263].x, lm[33].y - lm[263].y))
    opening = np.array(opening)
    n = len(opening)
    scores = {lag: float(np.corrcoef(opening[max(0, lag) : n + min(0, lag)], rms[max(0, -lag) : n - max(0, lag)])[0, 1])
              for lag in range(-3, 4)}
    best = max(scores, key=scores.get)
    print(f"\nmp4 lip sync: lag {best}, correlation {scores[best]:.3f}")
    assert abs(best) <= 1 and scores[best] >= 0.5, scores
