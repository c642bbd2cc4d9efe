"""One ``Render`` stream: speech playout, the driving timeline, real-time pacing and frame scheduling.

Clock: frame ``k`` has ``pts_us = round(k * 1e6 / fps)``; the audio re-emitted with it covers the stream's
samples ``[round(k * rate / fps), round((k + 1) * rate / fps))``, so one frame's audio event and video
event share a pts and the two never drift. A session renders frame ``k`` as soon as frame ``k - 1`` went
out (controls from the timeline, pixels on a worker thread or in a shared batch), then holds it until its
due time ``t0 + k / fps``. A frame that cannot be on time is dropped: its audio still goes out (the audio
never has gaps), its video does not (``index`` jumps).

Speech: every utterance (reply) is a :class:`~services.renderer.driving.SpeechTrack` in a FIFO. An
utterance starts playing once ``prebuffer`` of its audio has arrived (or it has ended); each frame plays
the next ``rate / fps`` samples and shows the mouth at the utterance time of that audio's first sample.
If audio runs short mid-utterance (TTS slower than real time), frames go out without audio and the
mouth holds; playback resumes where it stopped, so sound and lips stay aligned.

Barge-in: a ``RenderClearBuffer`` wakes the pacing wait at once. A frame already rendered with speech
but not yet sent is discarded, the ``SpeechBufferCleared`` acknowledgement reports the position of the
last sample actually sent, and every later frame is rendered without speech.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import Counter, Histogram

from parley import metrics
from parley.audio import decode_frame, encode_frame
from parley.errors import InvalidInput
from parley.v1 import common_pb2, renderer_pb2
from services.renderer.controls import Controls
from services.renderer.driving import DrivingOptions, Emotion, Mode, SpeechTrack, Timeline
from services.renderer.schedulers import FrameScheduler

log = logging.getLogger("parley.renderer.session")

FRAMES = Counter(
    "parley_renderer_frames_total", "Video frames by outcome: sent, or dropped (late; their audio was sent)",
    ["service", "outcome"],
)
FRAME_LATENESS = Histogram(
    "parley_renderer_frame_lateness_seconds", "How late a frame was sent against its due time (0 = on time)",
    ["service"], buckets=(0.0, 0.002, 0.005, 0.01, 0.02, 0.033, 0.05, 0.1, 0.2, 0.5, 1.0),
)

EMOTIONS = {
    renderer_pb2.REPLICA_EMOTION_UNSPECIFIED: Emotion.NEUTRAL,
    renderer_pb2.REPLICA_EMOTION_NEUTRAL: Emotion.NEUTRAL,
    renderer_pb2.REPLICA_EMOTION_JOY: Emotion.JOY,
    renderer_pb2.REPLICA_EMOTION_SORROW: Emotion.SORROW,
    renderer_pb2.REPLICA_EMOTION_ANGER: Emotion.ANGER,
    renderer_pb2.REPLICA_EMOTION_SURPRISE: Emotion.SURPRISE,
}
MODES = {
    renderer_pb2.REPLICA_MODE_UNSPECIFIED: Mode.IDLE,
    renderer_pb2.REPLICA_MODE_IDLE: Mode.IDLE,
    renderer_pb2.REPLICA_MODE_LISTENING: Mode.LISTENING,
    renderer_pb2.REPLICA_MODE_SPEAKING: Mode.SPEAKING,
}
RGB24 = renderer_pb2.PIXEL_FORMAT_RGB24
I420 = renderer_pb2.PIXEL_FORMAT_I420
PIXEL_FORMATS = {renderer_pb2.PIXEL_FORMAT_UNSPECIFIED: RGB24, RGB24: RGB24, I420: I420}
BEEP_HZ = 1000.0
BEEP_S = 0.1


def parse_emotion(value: int, intensity: float) -> tuple[Emotion, float]:
    """Validate a proto emotion + intensity; InvalidInput with the reason."""
    if value not in EMOTIONS:
        raise InvalidInput(f"unknown emotion {value}; expected one of {', '.join(renderer_pb2.ReplicaEmotion.keys())}")
    if not math.isfinite(intensity) or not 0.0 <= intensity <= 1.0:
        raise InvalidInput(f"emotion intensity {intensity:g} is outside 0..1")
    return EMOTIONS[value], float(intensity)


def parse_mode(value: int) -> Mode:
    if value not in MODES:
        raise InvalidInput(f"unknown mode {value}; expected one of {', '.join(renderer_pb2.ReplicaMode.keys())}")
    return MODES[value]


def rgb_to_i420(rgb: np.ndarray) -> bytes:
    """RGB24 (h, w, 3) uint8 to planar I420 bytes (BT.601 limited range; odd sizes are edge-padded)."""
    h, w = rgb.shape[:2]
    if h % 2 or w % 2:
        rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    f = rgb.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = 16.0 + 0.2568 * r + 0.5041 * g + 0.0979 * b
    u = 128.0 - 0.1482 * r - 0.2910 * g + 0.4392 * b
    v = 128.0 + 0.4392 * r - 0.3678 * g - 0.0714 * b

    def sub(p: np.ndarray) -> np.ndarray:
        return 0.25 * (p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2])

    planes = [y[:h, :w], sub(u), sub(v)]
    return b"".join(np.clip(np.rint(p), 0, 255).astype(np.uint8).tobytes() for p in planes)


def i420_to_rgb(data: bytes, width: int, height: int) -> np.ndarray:
    """Inverse of :func:`rgb_to_i420` (for clients and tests)."""
    n = width * height
    cw, ch = (width + 1) // 2, (height + 1) // 2
    y = np.frombuffer(data, np.uint8, n).reshape(height, width).astype(np.float32) - 16.0
    u = np.frombuffer(data, np.uint8, cw * ch, n).reshape(ch, cw).astype(np.float32) - 128.0
    v = np.frombuffer(data, np.uint8, cw * ch, n + cw * ch).reshape(ch, cw).astype(np.float32) - 128.0
    u = u.repeat(2, 0).repeat(2, 1)[:height, :width]
    v = v.repeat(2, 0).repeat(2, 1)[:height, :width]
    r = 1.164 * y + 1.596 * v
    g = 1.164 * y - 0.392 * u - 0.813 * v
    b = 1.164 * y + 2.017 * u
    return np.clip(np.rint(np.stack([r, g, b], -1)), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# Speech playout
# ------------------------------------------------------------------------------------------------
@dataclass
class Utterance:
    id: str
    track: SpeechTrack
    ended: bool = False
    started: bool = False
    cursor: int = 0  # samples of this utterance already sent
    start_pts_us: int = 0


@dataclass
class FramePlan:
    """What frame ``index`` will play; computed without side effects, applied by ``commit``."""

    index: int
    utterance: Utterance | None = None
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    cursor: int = 0  # utterance cursor after this frame
    mouth: np.ndarray | None = None
    finish: bool = False

    @property
    def speaking(self) -> bool:
        return self.utterance is not None


class SpeechPlayer:
    """A FIFO of utterances played out frame by frame on the stream's sample clock."""

    def __init__(self, rate: int, fps: int, prebuffer_s: float, max_buffer_s: float, options: DrivingOptions) -> None:
        self.rate = rate
        self.fps = fps
        self.prebuffer = round(prebuffer_s * rate)
        self.max_buffer = round(max_buffer_s * rate)
        self.options = options
        self.queue: collections.deque[Utterance] = collections.deque()
        self.finished: set[str] = set()
        self.cancelled: set[str] = set()
        self.last_audio_end_us = 0

    def frame_samples(self, k: int) -> tuple[int, int]:
        """The stream's sample range ``[a, b)`` that frame ``k`` covers."""
        return round(k * self.rate / self.fps), round((k + 1) * self.rate / self.fps)

    def pts_us(self, k: int) -> int:
        return round(k * 1e6 / self.fps)

    @property
    def idle(self) -> bool:
        return not self.queue

    def _find(self, utterance_id: str) -> Utterance | None:
        return next((u for u in self.queue if u.id == utterance_id), None)

    def _unplayed(self) -> int:
        return sum(u.track.n_samples - u.cursor for u in self.queue)

    # -- input ----------------------------------------------------------------------------------
    def add(self, utterance_id: str, samples: np.ndarray, timestamp_us: int, words: Any, phonemes: Any) -> None:
        """Queue a decoded speech chunk (utterance-relative timestamp and timings)."""
        if utterance_id in self.cancelled:
            return  # cleared by barge-in: late chunks of it are dropped
        if utterance_id in self.finished:
            raise InvalidInput(f"utterance {utterance_id!r} has already finished playing")
        utt = self._find(utterance_id)
        if utt is None:
            utt = Utterance(utterance_id, SpeechTrack(self.rate, self.options))
            self.queue.append(utt)
        elif utt.ended:
            raise InvalidInput(f"speech for utterance {utterance_id!r} after its RenderSpeechEnd")
        if self._unplayed() + len(samples) > self.max_buffer:
            raise InvalidInput(f"more than {self.max_buffer / self.rate:.0f} s of unplayed speech queued")
        start = timestamp_us / 1e6 if timestamp_us or not utt.track.n_samples else None
        utt.track.add_audio(samples, start)
        if words or phonemes:
            utt.track.add_timings(phonemes, words)

    def end(self, utterance_id: str) -> None:
        if utterance_id in self.cancelled or utterance_id in self.finished:
            return
        utt = self._find(utterance_id)
        if utt is None:  # an utterance with no audio at all: nothing to play
            self.finished.add(utterance_id)
            return
        utt.ended = True

    def end_all(self) -> None:
        """No more input at all: every queued utterance ends with what it has."""
        for utt in self.queue:
            utt.ended = True

    # -- playout --------------------------------------------------------------------------------
    def plan(self, k: int) -> FramePlan:
        if not self.queue:
            return FramePlan(k)
        utt = self.queue[0]
        track = utt.track
        if not utt.started and not utt.ended and track.n_samples < self.prebuffer:
            return FramePlan(k)  # still buffering
        a, b = self.frame_samples(k)
        available = track.n_samples - utt.cursor
        u = utt.cursor / self.rate
        if available < b - a and not utt.ended:  # underrun: hold the mouth, send no audio
            return FramePlan(k, utt, cursor=utt.cursor, mouth=track.mouth(u))
        take = min(b - a, available)
        return FramePlan(
            k, utt, track.samples(utt.cursor, utt.cursor + take), utt.cursor + take,
            track.mouth(u), finish=utt.ended and utt.cursor + take >= track.n_samples,
        )

    def commit(self, plan: FramePlan) -> tuple[list[renderer_pb2.RenderEvent], list[renderer_pb2.RenderEvent]]:
        """Apply ``plan``: (events to send before the frame's audio, events to send after its video)."""
        before: list[renderer_pb2.RenderEvent] = []
        after: list[renderer_pb2.RenderEvent] = []
        utt = plan.utterance
        if utt is None:
            return before, after
        pts = self.pts_us(plan.index)
        if not utt.started:
            utt.started = True
            utt.start_pts_us = pts
            before.append(renderer_pb2.RenderEvent(
                playback_started=renderer_pb2.SpeechPlaybackStarted(utterance_id=utt.id, pts_us=pts)))
        utt.cursor = plan.cursor
        if len(plan.samples):
            self.last_audio_end_us = pts + round(len(plan.samples) * 1e6 / self.rate)
        if plan.finish:
            self.queue.popleft()
            self.finished.add(utt.id)
            end = self.last_audio_end_us if len(plan.samples) or utt.cursor else pts
            after.append(renderer_pb2.RenderEvent(playback_finished=renderer_pb2.SpeechPlaybackFinished(
                utterance_id=utt.id, pts_us=end, duration_us=round(utt.cursor * 1e6 / self.rate),
                words=[_word(w) for w in utt.track.words])))
        return before, after

    def clear(self) -> renderer_pb2.SpeechBufferCleared:
        """Drop everything queued; the acknowledgement with what was actually played."""
        ack = renderer_pb2.SpeechBufferCleared(pts_us=self.last_audio_end_us)
        current = self.queue[0] if self.queue and self.queue[0].started else None
        if current is not None:
            played = current.cursor / self.rate
            words = current.track.words_until(played)
            ack.utterance_id = current.id
            ack.played_us = round(played * 1e6)
            ack.words_played.extend(_word(w) for w in words)
            ack.last_word_cut = bool(words) and words[-1].end > played + 1e-6
        ack.dropped_utterance_ids.extend(u.id for u in self.queue if u is not current)
        for u in self.queue:
            self.cancelled.add(u.id)
        self.queue.clear()
        return ack


def _word(w: Any) -> common_pb2.WordTiming:
    return common_pb2.WordTiming(word=w.word, start_us=round(w.start * 1e6), end_us=round(w.end * 1e6), confidence=1.0)


# ------------------------------------------------------------------------------------------------
# The session
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SessionParams:
    session_id: str
    replica_id: str
    size: int
    fps: int
    pixel_format: int
    test_pattern: bool
    emotion: Emotion
    intensity: float
    mode: Mode
    audio_rate: int


_END = object()


class RenderSession:
    """Runs one stream: ``handle`` takes requests (from the reader task), ``run`` yields RenderEvents."""

    def __init__(self, params: SessionParams, renderer: Any, scheduler: FrameScheduler, options: DrivingOptions,
                 prebuffer_s: float = 0.1, max_buffer_s: float = 120.0, pattern_period_s: float = 1.0) -> None:
        self.params = params
        self.renderer = renderer
        self.scheduler = scheduler
        self.options = options
        self.timeline = Timeline(options, params.emotion, params.intensity, params.mode)
        self.player = SpeechPlayer(params.audio_rate, params.fps, prebuffer_s, max_buffer_s, options)
        self.pattern_every = max(1, round(pattern_period_s * params.fps))
        self.inbox: collections.deque[Any] = collections.deque()
        self.wake = asyncio.Event()
        self.error: BaseException | None = None
        self.input_closed = False
        self._clears_requested = 0
        self._clears_done = 0
        self.frames_sent = 0
        self.frames_dropped = 0

    # -- input (reader task) --------------------------------------------------------------------
    def handle(self, request: renderer_pb2.RenderRequest) -> None:
        """Validate one request and queue it for the frame loop; InvalidInput for bad input."""
        kind = request.WhichOneof("payload")
        if kind == "speech":
            speech = request.speech
            if not speech.utterance_id:
                raise InvalidInput("RenderSpeech.utterance_id is required")
            audio = decode_frame(speech.speech.audio, target_rate=self.params.audio_rate)
            if speech.speech.audio.timestamp_us < 0:
                raise InvalidInput("speech audio timestamp_us must not be negative")
            for t in (*speech.speech.words, *speech.speech.phonemes):
                if t.end_us < t.start_us or t.start_us < 0:
                    raise InvalidInput(f"bad timing {t.start_us}..{t.end_us} us")
            self.inbox.append(("speech", speech.utterance_id, audio.samples, audio.timestamp_us,
                               list(speech.speech.words), list(speech.speech.phonemes)))
        elif kind == "speech_end":
            if not request.speech_end.utterance_id:
                raise InvalidInput("RenderSpeechEnd.utterance_id is required")
            self.inbox.append(("end", request.speech_end.utterance_id))
        elif kind == "emotion":
            e = request.emotion
            emotion, intensity = parse_emotion(e.emotion, e.intensity)
            if not math.isfinite(e.transition_s) or e.transition_s < 0:
                raise InvalidInput(f"transition_s {e.transition_s:g} must be a non-negative number")
            self.inbox.append(("emotion", emotion, intensity, e.transition_s or None))
        elif kind == "mode":
            self.inbox.append(("mode", parse_mode(request.mode.mode)))
        elif kind == "user_paused":
            self.inbox.append(("nod",))
        elif kind == "clear":
            self._clears_requested += 1
            self.inbox.append(("clear",))
            self.wake.set()
        elif kind == "start":
            raise InvalidInput("RenderStart may only be sent once, as the first message")
        else:
            raise InvalidInput("empty RenderRequest: set one of its payload fields")

    def fail(self, exc: BaseException) -> None:
        self.error = exc
        self.wake.set()

    def close_input(self) -> None:
        self.input_closed = True
        self.inbox.append(("closed",))
        self.wake.set()

    # -- frame loop -----------------------------------------------------------------------------
    def _drain(self) -> list[renderer_pb2.RenderEvent]:
        out = []
        while self.inbox:
            item = self.inbox.popleft()
            kind = item[0]
            if kind == "speech":
                self.player.add(*item[1:])
            elif kind == "end":
                self.player.end(item[1])
            elif kind == "emotion":
                self.timeline.set_emotion(item[1], item[2], item[3])
            elif kind == "mode":
                self.timeline.set_mode(item[1])
            elif kind == "nod":
                self.timeline.nod()
            elif kind == "clear":
                self._clears_done += 1
                out.append(renderer_pb2.RenderEvent(cleared=self.player.clear()))
            elif kind == "closed":
                self.player.end_all()
        return out

    def _clear_pending(self) -> bool:
        return self._clears_requested > self._clears_done

    def _is_flash(self, k: int) -> bool:
        return self.params.test_pattern and k % self.pattern_every == 0

    def _audio(self, plan: FramePlan) -> np.ndarray | None:
        """The frame's audio: speech, plus (test pattern) silence and the beep on flash frames."""
        if not self.params.test_pattern:
            return plan.samples if len(plan.samples) else None
        a, b = self.player.frame_samples(plan.index)
        out = np.zeros(b - a, np.float32)
        out[: len(plan.samples)] += plan.samples
        period = self.pattern_every
        k0 = plan.index - plan.index % period  # last flash frame
        beep_start = self.player.frame_samples(k0)[0]
        beep_len = round(BEEP_S * self.params.audio_rate)
        n = np.arange(a, b) - beep_start
        on = (n >= 0) & (n < beep_len)
        out[on] += 0.5 * np.sin(2 * np.pi * BEEP_HZ * n[on] / self.params.audio_rate).astype(np.float32)
        return np.clip(out, -1.0, 1.0)

    def _post(self, image: np.ndarray) -> bytes:
        if self.params.pixel_format == I420:
            return rgb_to_i420(image)
        return np.ascontiguousarray(image, np.uint8).tobytes()

    async def _pixels(self, k: int, controls: Controls) -> bytes:
        if self._is_flash(k):
            white = np.full((self.params.size, self.params.size, 3), 255, np.uint8)
            return self._post(white)
        return await self.scheduler.render(self.renderer, controls, self._post)

    def _events(self, plan: FramePlan, data: bytes | None) -> list[renderer_pb2.RenderEvent]:
        """Commit ``plan`` and build its events (``data`` None = dropped frame: audio only)."""
        before, after = self.player.commit(plan)
        events = list(before)
        pts = self.player.pts_us(plan.index)
        audio = self._audio(plan)
        if audio is not None and len(audio):
            events.append(renderer_pb2.RenderEvent(audio=encode_frame(audio, self.params.audio_rate, pts)))
        if data is not None:
            size = self.params.size
            events.append(renderer_pb2.RenderEvent(video=renderer_pb2.RenderedFrame(
                data=data, width=size, height=size, pixel_format=self.params.pixel_format, pts_us=pts,
                index=plan.index, speaking=plan.speaking and len(plan.samples) > 0,
                utterance_id=plan.utterance.id if plan.utterance else "", flash=self._is_flash(plan.index))))
        return events + after

    async def run(self, ready: renderer_pb2.RenderEvent, started_at: float | None = None) -> AsyncIterator[
            renderer_pb2.RenderEvent]:
        loop = asyncio.get_running_loop()
        fps = self.params.fps
        yield ready
        t0: float | None = None
        k = 0
        while True:
            for event in self._drain():
                yield event
            if self.error is not None:
                raise self.error
            if self.input_closed and self.player.idle:
                return
            plan = self.player.plan(k)
            controls = self.timeline.next(plan.mouth)
            data = await self._pixels(k, controls)
            if t0 is None:
                t0 = loop.time()
                if self.scheduler.aligned:  # start on the shared tick grid (batched rendering)
                    t0 = math.ceil(t0 * fps) / fps
                if started_at is not None:
                    metrics.observe("session_start", time.perf_counter() - started_at)
            due = t0 + k / fps
            while not (plan.speaking and self._clear_pending()) and self.error is None:
                delay = due - loop.time()
                if delay <= 0:
                    break
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), delay)
                except TimeoutError:
                    break
            if self.error is not None:
                raise self.error
            if plan.speaking and self._clear_pending():
                self.timeline.skip(-1)  # discard this speech frame; render frame k again without speech
                continue
            FRAME_LATENESS.labels(metrics.service_name()).observe(max(0.0, loop.time() - due))
            for event in self._events(plan, data):
                yield event
            FRAMES.labels(metrics.service_name(), "sent").inc()
            self.frames_sent += 1
            k += 1
            # Behind real time by a whole frame or more: drop those frames' video, keep their audio.
            behind = math.floor((loop.time() - t0) * fps) - k
            for _ in range(max(0, behind)):
                if self._clear_pending() or self._is_flash(k):  # flash frames cost nothing: never dropped
                    break
                plan = self.player.plan(k)
                self.timeline.next(plan.mouth)
                for event in self._events(plan, None):
                    yield event
                FRAMES.labels(metrics.service_name(), "dropped").inc()
                self.frames_dropped += 1
                k += 1
