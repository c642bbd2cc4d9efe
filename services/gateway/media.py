"""The call's media on one clock: the renderer's presentation timestamps become the RTP timestamps.

Outgoing: :class:`MediaOut` takes the renderer's ``RenderedFrame`` / ``AudioFrame`` events (stream clock:
frame ``k`` has ``pts_us = k * 1e6 / fps`` and the audio re-emitted with it starts at the same pts) and
hands aiortc frames whose ``pts`` / ``time_base`` are that clock: video at 1/90000 (VP8/H.264 RTP clock),
audio at 1/audio_rate in 20 ms frames (one Opus packet each, so every packet gets its own RTP timestamp;
aiortc stamps all packets of one ``encode`` call alike). Audio never has holes: video frames that came
without speech get silence on the audio clock, so idle video and silent audio flow all the time and the
browser's lip sync (RTCP sender reports of both streams) lines them up.

Incoming: :func:`read_microphone` decodes the browser's Opus (48 kHz) into mono float chunks for the
orchestrator; :class:`CameraSink` keeps the latest camera frame for perception.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

from parley.audio import Audio
from parley.v1 import renderer_pb2

log = logging.getLogger("parley.gateway.media")

VIDEO_CLOCK = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)
AUDIO_PACKET_S = 0.02
I420 = renderer_pb2.PIXEL_FORMAT_I420


def video_rtp_ticks(pts_us: int) -> int:
    """Stream-clock microseconds -> 90 kHz ticks (what aiortc writes into RTP, plus its random origin)."""
    return round(pts_us * VIDEO_CLOCK / 1_000_000)


def to_video_frame(frame: renderer_pb2.RenderedFrame) -> VideoFrame:
    """A RenderedFrame (I420 or RGB24) as an av.VideoFrame with pts on the 90 kHz clock."""
    w, h = frame.width, frame.height
    data = np.frombuffer(frame.data, np.uint8)
    if frame.pixel_format == I420:
        out = VideoFrame.from_ndarray(data.reshape(h * 3 // 2, w), format="yuv420p")
    else:
        out = VideoFrame.from_ndarray(data.reshape(h, w, 3), format="rgb24")
    out.pts = video_rtp_ticks(frame.pts_us)
    out.time_base = VIDEO_TIME_BASE
    return out


@functools.lru_cache(maxsize=8)
def opus_advance(rate: int) -> float:
    """How much earlier than its pts a 20 ms frame at ``rate`` must be handed to aiortc so that the Opus
    packet holding it leaves at the pts: aiortc's resampler holds frames back (one packet for 16/24 kHz
    input, none at 48 kHz) and decoded Opus trails its RTP timestamp by the encoder look-ahead (~6.5 ms).
    Measured once per rate by encoding and decoding a step with aiortc's own codec."""
    from aiortc.codecs.opus import OpusDecoder, OpusEncoder
    from aiortc.jitterbuffer import JitterFrame

    enc, dec = OpusEncoder(), OpusDecoder()
    n = round(rate * AUDIO_PACKET_S)
    first_call: int | None = None
    heard: int | None = None
    for i in range(12):
        x = np.zeros(n, np.int16)
        if i == 4:
            x[:] = 16000
        frame = AudioFrame.from_ndarray(x.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, i * n, fractions.Fraction(1, rate)
        payloads, ts = enc.encode(frame)
        if payloads and first_call is None:
            first_call = i
        for payload in payloads:
            decoded = dec.decode(JitterFrame(data=payload, timestamp=ts))[0]
            out = decoded.to_ndarray().reshape(-1, len(decoded.layout.channels))[:, 0]
            hit = np.nonzero(np.abs(out) > 4000)[0]
            if heard is None and len(hit):
                heard = ts + int(hit[0])
    if first_call is None or heard is None:
        return AUDIO_PACKET_S
    lookahead = (heard - 4 * 960) / 48_000
    return first_call * AUDIO_PACKET_S + max(0.0, lookahead)


class MediaOut:
    """Per-call outgoing media queues fed by renderer events; read by the outgoing tracks."""

    def __init__(self, audio_rate: int, fps: int, max_queue_s: float = 0.5, send_delay_s: float = 0.03) -> None:
        self.audio_rate = audio_rate
        self.send_delay_s = send_delay_s
        self.fps = fps
        self.max_queue_s = max_queue_s
        self.packet = round(audio_rate * AUDIO_PACKET_S)
        self._video: collections.deque[renderer_pb2.RenderedFrame] = collections.deque()
        self._audio: collections.deque[tuple[int, np.ndarray]] = collections.deque()  # (pts samples, int16)
        self._fifo = np.zeros(0, np.int16)
        self._fifo_pts: int | None = None  # audio-clock sample index of _fifo[0]
        self._video_ready = asyncio.Event()
        self._audio_ready = asyncio.Event()
        self.last_video_pts_us = -1
        self.video_frames_in = 0
        self.video_frames_dropped = 0
        self.audio_packets_dropped = 0
        self.closed = False
        self._video_live = False
        self._audio_live = False
        self._offset: float | None = None  # wall (loop) seconds - stream seconds, from video arrivals
        self.video_send_lag = 0.0  # encode + send time of a video frame after its release (EMA, seconds)
        self._video_released: float | None = None

    # -- input (renderer reader task) ------------------------------------------------------------
    def push_audio(self, timestamp_us: int, pcm: bytes) -> None:
        """Speech (or test-pattern) audio from the renderer: PCM16 mono at audio_rate, stream clock."""
        self._add_audio(round(timestamp_us * self.audio_rate / 1e6), np.frombuffer(pcm, "<i2"))

    def push_video(self, frame: renderer_pb2.RenderedFrame) -> None:
        """A rendered frame; the audio clock is filled with silence up to the end of its interval."""
        self.video_frames_in += 1
        self.last_video_pts_us = frame.pts_us
        self._anchor(frame.pts_us / 1e6)
        end = round((frame.pts_us / 1e6 + 1 / self.fps) * self.audio_rate)
        covered = self._covered()
        if covered is None:
            self._fifo_pts = round(frame.pts_us * self.audio_rate / 1e6)
            covered = self._fifo_pts
        if end > covered:
            self._add_audio(covered, np.zeros(end - covered, np.int16))
        self._video.append(frame)
        self._trim(self._video, lambda f: f.pts_us / 1e6, "video")
        self._video_ready.set()

    def _anchor(self, pts_s: float) -> None:
        """Track when stream time ``t`` is due on the wall clock (the renderer sends frame k at its due time):
        the earliest arrival wins at once, later ones pull the estimate up slowly (clock drift, restarts)."""
        d = asyncio.get_running_loop().time() - pts_s
        if self._offset is None or d < self._offset or d - self._offset > 1.0:
            self._offset = d
        else:
            self._offset += 0.002 * (d - self._offset)

    def due(self, pts_s: float) -> float | None:
        """Wall (event loop) time at which stream time ``pts_s`` is due, once known."""
        return None if self._offset is None else self._offset + pts_s

    def _covered(self) -> int | None:
        return None if self._fifo_pts is None else self._fifo_pts + len(self._fifo)

    def _add_audio(self, pts: int, samples: np.ndarray) -> None:
        covered = self._covered()
        if covered is None:
            self._fifo_pts, covered = pts, pts
        gap = pts - covered
        if gap > self.audio_rate:  # a jump of more than a second: restart the audio clock there
            self._fifo, self._fifo_pts = np.zeros(0, np.int16), pts
        elif gap > 0:
            samples = np.concatenate([np.zeros(gap, np.int16), samples])
        elif gap < 0:
            samples = samples[-gap:]  # already covered (silence filled for a late speech chunk)
        if len(samples):
            self._fifo = np.concatenate([self._fifo, samples]) if len(self._fifo) else samples.copy()
        n = self.packet
        while len(self._fifo) >= n:
            chunk, self._fifo = self._fifo[:n], self._fifo[n:]
            self._audio.append((self._fifo_pts, chunk))
            self._fifo_pts += n
        self._trim(self._audio, lambda a: a[0] / self.audio_rate, "audio")
        self._audio_ready.set()

    def _trim(self, queue: collections.deque, seconds: Callable[[Any], float], kind: str) -> None:
        """Drop media the sender has not taken for max_queue_s (no peer yet, or a stalled one)."""
        while len(queue) > 1 and seconds(queue[-1]) - seconds(queue[0]) > self.max_queue_s:
            queue.popleft()
            if kind == "video":
                self.video_frames_dropped += 1
            else:
                self.audio_packets_dropped += 1

    def close(self) -> None:
        self.closed = True
        self._video_ready.set()
        self._audio_ready.set()

    # -- output (track recv) ---------------------------------------------------------------------
    async def next_video(self) -> VideoFrame:
        if not self._video_live:  # a new sender starts at the live edge, not with a backlog
            self._video_live = True
            while len(self._video) > 1:
                self._video.popleft()
        while not self._video:
            if self.closed:
                raise MediaStreamError
            self._video_ready.clear()
            await self._video_ready.wait()
        frame = self._video.popleft()
        # Leave at due + send_delay: the frame's packets are out send_delay after its pts is due
        # (encoding takes video_send_lag of that).
        await self._hold(frame.pts_us / 1e6, self.send_delay_s - self.video_send_lag)
        self._video_released = asyncio.get_running_loop().time()
        return to_video_frame(frame)

    def video_sent(self) -> None:
        """The video sender asks for the next frame: the previous one has been encoded and sent."""
        if self._video_released is not None:
            lag = min(0.1, asyncio.get_running_loop().time() - self._video_released)
            self.video_send_lag += 0.1 * (lag - self.video_send_lag)
            self._video_released = None

    async def _hold(self, pts_s: float, extra_s: float) -> None:
        due = self.due(pts_s)
        if due is not None:
            delay = due + extra_s - asyncio.get_running_loop().time()
            if 0 < delay < 0.3:
                await asyncio.sleep(delay)

    async def next_audio(self) -> AudioFrame:
        if not self._audio_live:
            self._audio_live = True
            while len(self._audio) > 2:
                self._audio.popleft()
        while not self._audio:
            if self.closed:
                raise MediaStreamError
            self._audio_ready.clear()
            await self._audio_ready.wait()
        pts, samples = self._audio.popleft()
        # Pace: the renderer hands over a frame interval of audio at once; release each 20 ms packet so that
        # the Opus packet carrying it leaves send_delay after its pts is due, like the video, and evenly
        # (small receiver jitter buffer). aiortc's Opus path emits a frame's packet only with the next
        # frame and its decoded audio trails the RTP timestamp by the encoder look-ahead: opus_advance().
        await self._hold(pts / self.audio_rate, self.send_delay_s - opus_advance(self.audio_rate))
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.audio_rate
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, self.audio_rate)
        return frame

    def flush(self) -> None:
        """A new peer connection: its senders start from the live edge."""
        self._video_live = False
        self._audio_live = False


class RenderedVideoTrack(MediaStreamTrack):
    """Outgoing video: the renderer's frames with their pts. Learns aiortc's RTP timestamp origin so the
    web client can map a decoded frame's ``rtpTimestamp`` back to the stream clock (see ``rtp_origin``)."""

    kind = "video"

    def __init__(self, media: MediaOut, on_origin: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self.media = media
        self.sender: Any = None
        self.on_origin = on_origin
        self.rtp_origin: int | None = None
        self._last_ticks: int | None = None
        self._candidate: int | None = None

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        self.media.video_sent()
        self._learn_origin()
        frame = await self.media.next_video()
        self._last_ticks = frame.pts
        return frame

    def _learn_origin(self) -> None:
        # aiortc sends frame n's packets before it asks for frame n + 1, and remembers the RTP timestamp of
        # the last packet sent; RTP timestamp = origin + pts (90 kHz). Two agreeing readings fix the origin.
        if self.sender is None or self._last_ticks is None or self.rtp_origin is not None:
            return
        rtp = getattr(self.sender, "_RTCRtpSender__rtp_timestamp", None)
        if not rtp:
            return
        candidate = (rtp - self._last_ticks) % (1 << 32)
        if candidate == self._candidate:
            self.rtp_origin = candidate
            if self.on_origin is not None:
                self.on_origin(candidate)
        self._candidate = candidate


class RenderedAudioTrack(MediaStreamTrack):
    """Outgoing audio: the renderer's re-emitted speech (and silence) in 20 ms frames on the same clock."""

    kind = "audio"

    def __init__(self, media: MediaOut) -> None:
        super().__init__()
        self.media = media

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        return await self.media.next_audio()


def frame_to_mono(frame: AudioFrame) -> np.ndarray:
    """An aiortc-decoded audio frame (s16, packed or planar, any channels) as mono float32."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        mono = data.reshape(channels, -1).mean(axis=0) if channels > 1 else data.reshape(-1)
    else:
        mono = data.reshape(-1, channels).mean(axis=1) if channels > 1 else data.reshape(-1)
    if np.issubdtype(mono.dtype, np.integer) or data.dtype == np.int16:
        return (mono / 32768.0).astype(np.float32)
    return mono.astype(np.float32)


async def read_microphone(track: MediaStreamTrack, push: Callable[[Audio], Awaitable[None]],
                          on_level: Callable[[float], None] | None = None) -> None:
    """Decode the browser's audio track until it ends, pushing mono float chunks at their own rate."""
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        samples = frame_to_mono(frame)
        if on_level is not None and len(samples):
            on_level(float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))))
        await push(Audio(samples, frame.sample_rate))


class CameraSink:
    """Keeps the latest decoded camera frame (perception reads it later) and counts frames."""

    def __init__(self) -> None:
        self.latest: VideoFrame | None = None
        self.latest_at = 0.0
        self.frames = 0

    async def run(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.latest, self.latest_at = frame, time.monotonic()
            self.frames += 1

    def snapshot(self) -> np.ndarray | None:
        """The latest frame as RGB (h, w, 3) uint8, or None."""
        return None if self.latest is None else self.latest.to_ndarray(format="rgb24")
