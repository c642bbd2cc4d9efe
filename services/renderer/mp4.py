"""MP4 files: H.264 (libx264, yuv420p) video + AAC (mono) audio with PyAV, and offline reply rendering.

A/V alignment: FFmpeg's AAC encoder starts with ``priming`` (1024) samples of encoder delay. When the audio
frames carry explicit pts on a ``1/sample_rate`` time base, the encoder's first packet has pts = -1024 and
the MP4 muxer writes an edit list that makes decoders skip the priming, so the first decoded sample lands
at t = 0 like the first video frame. Audio frames without pts (PyAV's default) lose this: packets start at
pts 0 and the audio plays 1024 samples (64 ms at 16 kHz) late. :func:`write_mp4` always sets pts and, if an
encoder still starts at pts >= 0, shifts its packets back by the priming itself. The tests check the
result by decoding the file (flash frame vs beep onset), not by trusting the timestamps written.
"""

from __future__ import annotations

import fractions
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

AAC_PRIMING = 1024
AUDIO_FRAME = 1024


def _even(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return np.ascontiguousarray(frame, np.uint8)


def write_mp4(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = 24_000,
    *,
    crf: int = 20,
    preset: str = "veryfast",
    audio_bitrate: int = 96_000,
) -> Path:
    """Write RGB frames (``(h, w, 3)`` uint8, any iterable) and mono float audio to an MP4 file.

    Video: H.264 (libx264, yuv420p, ``crf``), frame ``i`` at ``i / fps``. Audio: AAC mono at
    ``sample_rate``, sample 0 at t = 0 (encoder priming compensated). Odd frame sizes are edge-padded to
    even. Returns the path.
    """
    import av

    path = Path(path)
    rate = fractions.Fraction(fps).limit_denominator(1001)
    container = av.open(str(path), "w")
    try:
        video = None
        n_frames = 0
        for i, frame in enumerate(frames):
            frame = _even(np.asarray(frame))
            if video is None:
                video = container.add_stream("libx264", rate=rate)
                video.height, video.width = frame.shape[:2]
                video.pix_fmt = "yuv420p"
                video.codec_context.time_base = 1 / rate
                video.options = {"crf": str(crf), "preset": preset}
                if audio is not None:  # add the audio stream before the first packet is muxed
                    astream = _add_audio(container, sample_rate, audio_bitrate)
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            vf.time_base = 1 / rate
            for packet in video.encode(vf):
                container.mux(packet)
            n_frames += 1
        if video is None:
            raise ValueError("write_mp4 needs at least one frame")
        for packet in video.encode():
            container.mux(packet)
        if audio is not None:
            _encode_audio(container, astream, np.asarray(audio, np.float32), sample_rate)
    finally:
        container.close()
    return path


def _add_audio(container: Any, sample_rate: int, bitrate: int) -> Any:
    stream = container.add_stream("aac", rate=sample_rate, layout="mono")
    stream.bit_rate = bitrate
    stream.codec_context.time_base = fractions.Fraction(1, sample_rate)
    return stream


def _encode_audio(container: Any, stream: Any, samples: np.ndarray, sample_rate: int) -> None:
    import av

    samples = np.clip(np.nan_to_num(samples.reshape(-1)), -1.0, 1.0).astype(np.float32)
    tb = fractions.Fraction(1, sample_rate)
    shift: int | None = None

    def mux(packets: Sequence[Any]) -> None:
        nonlocal shift
        for packet in packets:
            if shift is None:  # first packet: does the encoder already account for its priming?
                shift = 0 if packet.pts is not None and packet.pts < 0 else -AAC_PRIMING
            if shift and packet.pts is not None:
                packet.pts += shift
                packet.dts = packet.pts
            container.mux(packet)

    for start in range(0, len(samples), AUDIO_FRAME):
        chunk = samples[start : start + AUDIO_FRAME]
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = start
        frame.time_base = tb
        mux(stream.encode(frame))
    mux(stream.encode())


def render_reply_mp4(
    replica: Any,
    audio: np.ndarray,
    rate: int,
    words: Iterable[Any],
    phonemes: Iterable[Any],
    path: str | Path,
    emotion: str = "neutral",
    intensity: float = 0.7,
    *,
    size: int = 512,
    fps: int = 30,
    backend: str = "cpu",
    tail_s: float = 0.3,
    options: Any = None,
    replica_dir: str | Path | None = None,
) -> Path:
    """Render a whole spoken reply offline into an MP4 (speech from frame 0, ``tail_s`` of rest after it).

    ``replica``: a loaded Replica, a replica id in the store at ``replica_dir`` (default store:
    ``$PARLEY_REPLICA_DIR`` or the user cache), or None for the default replica. ``audio``: mono float
    samples at ``rate``.
    ``words`` / ``phonemes``: the reply's timings on the audio's timeline - TTS ``Timing`` objects,
    ``WordTiming`` / ``PhonemeTiming`` messages or ``(label, start_s, end_s)`` tuples; with no phonemes
    the mouth follows the audio alone. ``emotion``: neutral, joy, sorrow, anger or surprise at
    ``intensity`` for the whole reply.
    """
    from services.renderer.driving import DrivingOptions, SpeechTrack, speech_controls
    from services.renderer.face import FaceRenderer

    if replica is None or isinstance(replica, str):
        from services.renderer.replica import ReplicaStore

        store = ReplicaStore(replica_dir)
        replica = store.get(replica) if replica else store.default()
    options = options or DrivingOptions(fps=fps)
    audio = np.asarray(audio, np.float32).reshape(-1)
    track = SpeechTrack(rate, options)
    track.add_audio(audio)
    track.add_timings(list(phonemes), list(words))
    n = int(np.ceil((len(audio) / rate + tail_s) * fps))
    controls = speech_controls(track, options, emotion, intensity, frames=n)
    renderer = FaceRenderer(replica, size=size, backend=backend)
    padded = np.zeros(max(len(audio), round(n * rate / fps)), np.float32)
    padded[: len(audio)] = audio
    return write_mp4(path, (renderer.render(c) for c in controls), fps, padded, rate)
