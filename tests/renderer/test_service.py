"""The Renderer service over real gRPC on loopback: real replica + rasterizer, real Redis, real TTS speech."""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass, field

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parley.audio import encode_frame, pcm16_to_float
from parley.v1 import common_pb2, renderer_pb2, renderer_pb2_grpc, tts_pb2
from services.renderer.config import load_renderer_config
from services.renderer.mp4 import write_mp4
from services.renderer.server import build_app
from services.renderer.session import i420_to_rgb

pytestmark = pytest.mark.models

FPS = 30
RATE = 24_000
SIZE = 96
REPLY = ["Hello, it is good to see you.", "Let me tell you about the weather today."]


@pytest.fixture(scope="module")
def tts():
    from services.tts.backends.hibari_backend import HibariBackend
    from services.tts.config import HibariConfig

    backend = HibariBackend(HibariConfig())
    backend.load()
    return backend


@pytest.fixture(scope="module")
def reply(tts):
    """The TTS stream's SpeechAudio events for REPLY (200 ms chunks, timings on each clause's first event)."""
    events, offset = [], 0
    for index, text in enumerate(REPLY):
        syn = tts.synthesize(text, 1.0)
        off_us = round(offset * 1e6 / RATE)
        parts = np.array_split(syn.audio, max(1, round(len(syn.audio) / (RATE // 5))))
        for i, part in enumerate(parts):
            speech = tts_pb2.SpeechAudio(audio=encode_frame(part, RATE, round(offset * 1e6 / RATE)), text=text,
                                         clause_index=index)
            if i == 0:
                speech.words.extend(common_pb2.WordTiming(word=w.label, start_us=w.start_us + off_us,
                                                          end_us=w.end_us + off_us) for w in syn.words)
                speech.phonemes.extend(common_pb2.PhonemeTiming(phoneme=p.label, start_us=p.start_us + off_us,
                                                                end_us=p.end_us + off_us) for p in syn.phonemes)
            offset += len(part)
            events.append(speech)
    return events


def pcm(events) -> np.ndarray:
    return np.concatenate([pcm16_to_float(e.audio.data) for e in events])


@pytest.fixture
def renderer_config(redis_url, replica_store, astronaut_replica):
    """``make(**overrides)``: config on free loopback ports, replicas from the session's built store."""

    def make(**overrides):
        server = {"port": 0, "metrics_port": 0, "redis_url": redis_url, **overrides.pop("server", {})}
        overrides.setdefault("size", SIZE)
        overrides.setdefault("replica_dir", str(replica_store.root))
        return load_renderer_config(yaml_path="", environ={}, server=server, **overrides)

    return make


def start(session_id: str, **kw) -> renderer_pb2.RenderRequest:
    return renderer_pb2.RenderRequest(
        start=renderer_pb2.RenderStart(session=common_pb2.SessionRef(session_id=session_id), **kw))


def speech(utterance_id: str, event: tts_pb2.SpeechAudio) -> renderer_pb2.RenderRequest:
    return renderer_pb2.RenderRequest(speech=renderer_pb2.RenderSpeech(utterance_id=utterance_id, speech=event))


def end(utterance_id: str) -> renderer_pb2.RenderRequest:
    return renderer_pb2.RenderRequest(speech_end=renderer_pb2.RenderSpeechEnd(utterance_id=utterance_id))


@dataclass
class Stream:
    """One Render call: events with their arrival times, read by a background task."""

    call: object
    events: list = field(default_factory=list)
    error: grpc.aio.AioRpcError | None = None
    task: asyncio.Task | None = None

    @classmethod
    async def open(cls, stub, first: renderer_pb2.RenderRequest) -> Stream:
        s = cls(stub.Render())
        await s.call.write(first)
        s.task = asyncio.create_task(s._read())
        return s

    async def _read(self):
        try:
            async for event in self.call:
                self.events.append((time.monotonic(), event))
        except grpc.aio.AioRpcError as exc:
            self.error = exc

    async def send(self, request):
        await self.call.write(request)

    def of(self, kind: str, since: int = 0) -> list:
        return [e for _, e in self.events[since:] if e.WhichOneof("event") == kind]

    async def wait(self, predicate, within: float = 10.0):
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.task.done():
                break
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out; error={self.error}; last events: "
                             f"{[e.WhichOneof('event') for _, e in self.events[-5:]]}")

    async def close(self):
        self.call.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def failure(stub, *requests, within: float = 10.0) -> grpc.aio.AioRpcError:
    """Send ``requests`` on a new stream and return the error it ends with."""
    s = await Stream.open(stub, requests[0])
    for r in requests[1:]:
        await s.send(r)
    await asyncio.wait_for(s.task, within)
    assert s.error is not None, "stream did not fail"
    return s.error


async def test_live_frames_speech_playback_health_and_metrics(renderer_config, session_id, reply):
    app = build_app(renderer_config())
    async with app.running() as address, grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "parley.v1.Renderer"):
            status = (await health.Check(health_pb2.HealthCheckRequest(service=service))).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        stub = renderer_pb2_grpc.RendererStub(channel)
        s = await Stream.open(stub, start(session_id, fps=FPS, mode=renderer_pb2.REPLICA_MODE_LISTENING))
        await s.wait(lambda: len(s.of("video")) >= 45)  # 1.5 s of idle video
        ready = s.of("ready")[0].ready
        assert (ready.width, ready.height, ready.fps, ready.audio_sample_rate) == (SIZE, SIZE, FPS, RATE)
        idle = [(t, e.video) for t, e in s.events if e.HasField("video")]
        for _, v in idle:
            assert v.pts_us == round(v.index * 1e6 / FPS) and len(v.data) == SIZE * SIZE * 3 and not v.speaking
        assert all(b.index > a.index for (_, a), (_, b) in zip(idle, idle[1:], strict=False))
        wall = idle[-1][0] - idle[10][0]
        media = (idle[-1][1].pts_us - idle[10][1].pts_us) / 1e6
        assert media == pytest.approx(wall, rel=0.15, abs=0.05)  # paced in real time
        idle_fps = (len(idle) - 11) / wall

        mark = len(s.events)
        for event in reply:
            await s.send(speech("r1", event))
        await s.send(end("r1"))
        duration = len(pcm(reply)) / RATE
        await s.wait(lambda: s.of("playback_finished", mark), within=duration + 5)
        tail = s.events[mark:]
        kinds = [e.WhichOneof("event") for _, e in tail]
        started = s.of("playback_started", mark)[0].playback_started
        finished = s.of("playback_finished", mark)[0].playback_finished
        audio = [e.audio for e in s.of("audio", mark)]
        videos = [e.video for e in s.of("video", mark)]
        # audio: every sample once, on the video clock, starting at playback start
        played = np.concatenate([pcm16_to_float(a.data) for a in audio])
        assert len(played) == len(pcm(reply))
        assert np.abs(played - pcm(reply)).max() <= 2 / 32768
        assert audio[0].timestamp_us == started.pts_us
        for a, b in zip(audio, audio[1:], strict=False):
            assert b.timestamp_us == a.timestamp_us + round(len(a.data) / 2 * 1e6 / RATE) or (
                abs(b.timestamp_us - a.timestamp_us - 1e6 / FPS) <= 1)
        frame_pts = {v.pts_us for v in videos}
        on_frames = sum(a.timestamp_us in frame_pts for a in audio)
        assert on_frames >= 0.8 * len(audio)  # each audio event shares a pts with its frame (unless dropped)
        speaking = [v for v in videos if v.speaking]
        assert speaking and all(v.utterance_id == "r1" for v in speaking)
        assert speaking[0].pts_us == started.pts_us
        assert kinds.index("playback_started") < kinds.index("audio")
        assert finished.duration_us == pytest.approx(duration * 1e6, abs=1)
        assert finished.pts_us == started.pts_us + finished.duration_us
        assert [w.word for w in finished.words][:2] == ["Hello", "it"]
        # real time: the last audio event left when its pts came due
        t_first = next(t for t, e in tail if e.HasField("audio"))
        t_last = [t for t, e in tail if e.HasField("audio")][-1]
        assert t_last - t_first == pytest.approx((audio[-1].timestamp_us - audio[0].timestamp_us) / 1e6, abs=0.15)
        # the mouth moved while speaking and not before
        mouth = [mouth_energy(v) for v in speaking]
        assert np.ptp(mouth) > 0
        await s.send(renderer_pb2.RenderRequest(user_paused=renderer_pb2.RenderUserPaused()))
        await s.send(renderer_pb2.RenderRequest(emotion=renderer_pb2.RenderSetEmotion(
            emotion=renderer_pb2.REPLICA_EMOTION_JOY, intensity=0.8)))
        await asyncio.sleep(0.3)
        assert s.error is None
        await s.close()
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{app.metrics_port}/metrics")).text
        for stage in ("render_frame", "session_start"):
            assert f'parley_stage_latency_seconds_count{{service="renderer",stage="{stage}"}}' in text
        assert 'parley_renderer_frames_total{outcome="sent",service="renderer"}' in text
        print(f"\nservice idle fps {idle_fps:.1f} at {SIZE}px")


def mouth_energy(v: renderer_pb2.RenderedFrame) -> float:
    img = np.frombuffer(v.data, np.uint8).reshape(v.height, v.width, 3)
    return float(img[int(0.6 * v.height) : int(0.85 * v.height), int(0.3 * v.width) : int(0.7 * v.width)].mean())


async def test_clear_buffer_stops_speech_at_once(renderer_config, session_id, reply):
    app = build_app(renderer_config())
    async with app.running() as address, grpc.aio.insecure_channel(address) as channel:
        stub = renderer_pb2_grpc.RendererStub(channel)
        s = await Stream.open(stub, start(session_id))
        await s.wait(lambda: s.of("video"))
        for event in reply:
            await s.send(speech("r1", event))
        await s.send(speech("r2", reply[0]))  # a second reply queued behind the first
        await s.wait(lambda: s.of("playback_started"))
        await asyncio.sleep(0.8)
        sent_at = time.monotonic()
        await s.send(renderer_pb2.RenderRequest(clear=renderer_pb2.RenderClearBuffer()))
        await s.wait(lambda: s.of("cleared"))
        at = next(i for i, (_, e) in enumerate(s.events) if e.HasField("cleared"))
        ack_time, ack_event = s.events[at]
        ack = ack_event.cleared
        print(f"\nbarge-in: acknowledged {1e3 * (ack_time - sent_at):.0f} ms after the request was sent")
        assert ack_time - sent_at < 0.2  # at once: the pacing wait wakes up (a frame in the rasterizer finishes)
        before = [e.audio for _, e in s.events[:at] if e.HasField("audio")]
        last = before[-1]
        assert ack.utterance_id == "r1" and list(ack.dropped_utterance_ids) == ["r2"]
        assert ack.pts_us == last.timestamp_us + round(len(last.data) / 2 * 1e6 / RATE)
        samples = sum(len(a.data) // 2 for a in before)
        assert ack.played_us == round(samples * 1e6 / RATE)
        assert 0.6e6 <= ack.played_us <= 1.2e6
        words = [w for e in reply for w in e.words]
        assert [w.word for w in ack.words_played] == [w.word for w in words if w.start_us < ack.played_us]
        for event in reply[-3:]:  # late chunks of the cleared reply (TTS still in flight) are dropped
            await s.send(speech("r1", event))
        await asyncio.sleep(0.6)
        after = s.events[at + 1 :]
        assert not [e for _, e in after if e.HasField("audio")]
        videos = [e.video for _, e in after if e.HasField("video")]
        assert len(videos) >= 10 and not any(v.speaking for v in videos)
        # a new reply plays after the barge-in; half-closing ends the call once it has played (no RenderSpeechEnd)
        mark = len(s.events)
        await s.send(speech("r3", reply[0]))
        await s.call.done_writing()
        await asyncio.wait_for(s.task, 5)
        assert s.error is None and await s.call.code() == grpc.StatusCode.OK
        done = s.of("playback_finished", mark)
        assert done and done[-1].playback_finished.utterance_id == "r3"
        assert done[-1].playback_finished.duration_us == round(len(reply[0].audio.data) / 2 * 1e6 / RATE)


async def test_bad_input_is_rejected_while_another_session_renders(renderer_config, store, session_id, reply,
                                                                  replica_store, tmp_path):
    root = tmp_path / "replicas"
    root.mkdir()
    shutil.copy(replica_store.path("astronaut"), root / "astronaut.npz")
    corrupt_id = "r_corrupt"
    (root / f"{corrupt_id}.npz").write_bytes(b"this is not a replica archive")
    app = build_app(renderer_config(replica_dir=str(root)))
    async with app.running() as address, grpc.aio.insecure_channel(address) as channel:
        stub = renderer_pb2_grpc.RendererStub(channel)
        good = await Stream.open(stub, start(session_id))
        await good.wait(lambda: len(good.of("video")) >= 5)
        mark = len(good.events)
        other = await store.create()
        bad_audio = encode_frame(np.zeros(100, np.float32), 1000)
        cases = [
            ((start(other, replica_id="r_doesnotexist"),), grpc.StatusCode.NOT_FOUND, "r_doesnotexist"),
            ((start(other, replica_id=corrupt_id),), grpc.StatusCode.INVALID_ARGUMENT, ""),
            ((start(other, size=8),), grpc.StatusCode.INVALID_ARGUMENT, "size"),
            ((start(other, size=5000),), grpc.StatusCode.INVALID_ARGUMENT, "size"),
            ((start(other, fps=240),), grpc.StatusCode.INVALID_ARGUMENT, "fps"),
            ((start(other, emotion=99),), grpc.StatusCode.INVALID_ARGUMENT, "emotion"),
            ((start(other, emotion=renderer_pb2.REPLICA_EMOTION_JOY, emotion_intensity=1.5),),
             grpc.StatusCode.INVALID_ARGUMENT, "intensity"),
            ((start("no-such-session"),), grpc.StatusCode.NOT_FOUND, "session"),
            ((speech("u", reply[0]),), grpc.StatusCode.INVALID_ARGUMENT, "RenderStart"),
            ((start(other), speech("u", tts_pb2.SpeechAudio(audio=bad_audio))), grpc.StatusCode.INVALID_ARGUMENT,
             "sample_rate"),
            ((start(other), renderer_pb2.RenderRequest(emotion=renderer_pb2.RenderSetEmotion(emotion=42))),
             grpc.StatusCode.INVALID_ARGUMENT, "emotion"),
            ((start(other), speech("", reply[0])), grpc.StatusCode.INVALID_ARGUMENT, "utterance_id"),
        ]
        for requests, code, text in cases:
            err = await failure(stub, *requests)
            assert err.code() == code, (requests[-1], err.code(), err.details())
            assert text in err.details(), err.details()
        await asyncio.sleep(0.5)
        # the good session kept rendering the whole time, without stalls
        times = [t for t, e in good.events[mark:] if e.HasField("video")]
        assert len(times) >= 12 and max(np.diff(times)) < 0.2
        assert good.error is None
        await good.close()


async def test_test_pattern_flash_and_beep_share_a_pts_through_to_mp4(renderer_config, session_id, tmp_path):
    app = build_app(renderer_config(size=64))
    async with app.running() as address, grpc.aio.insecure_channel(address) as channel:
        stub = renderer_pb2_grpc.RendererStub(channel)
        s = await Stream.open(stub, start(session_id, test_pattern=True, pixel_format=renderer_pb2.PIXEL_FORMAT_I420))
        await s.wait(lambda: len(s.of("audio")) >= 2 * FPS + 10, within=15)
        await s.close()
    videos = [e.video for e in s.of("video")]
    audio = [e.audio for e in s.of("audio")]
    flashes = [v for v in videos if v.flash]
    assert [v.index for v in flashes][:3] == [0, FPS, 2 * FPS]
    frames = {v.index: i420_to_rgb(v.data, v.width, v.height) for v in videos}
    assert all(frames[v.index].mean() > 240 for v in flashes)
    # audio is continuous on the frame clock, and each beep starts exactly at a flash frame's pts
    assert [a.timestamp_us for a in audio] == [round(k * 1e6 / FPS) for k in range(len(audio))]
    samples = np.concatenate([pcm16_to_float(a.data) for a in audio])
    loud = np.flatnonzero(np.abs(samples) > 0.05)
    beep_starts = [loud[0]] + [b for a, b in zip(loud, loud[1:], strict=False) if b - a > RATE // 10]
    assert [round(b * 1e6 / RATE) for b in beep_starts][:2] == pytest.approx([f.pts_us for f in flashes][:2], abs=100)
    # the same media through write_mp4: decoded flash vs beep onset within one frame
    n = max(frames) + 1
    rgb = [frames.get(k, frames[max(j for j in frames if j <= k)]) for k in range(n)]
    path = write_mp4(tmp_path / "pattern.mp4", rgb, FPS, samples[: round(n * RATE / FPS)], RATE)
    from tests.renderer.test_mp4 import decode, onsets

    times, levels, decoded, start_t, _ = decode(path)
    flash_times = [float(times[i]) for i in np.flatnonzero(levels > 200)]
    beeps = [start_t + t for t in onsets(decoded, RATE, 0.05)]
    offsets = [b - f for b, f in zip(beeps, flash_times, strict=False)]
    assert offsets and max(abs(o) for o in offsets) < 1 / FPS, offsets


async def test_batched_scheduler_renders_sessions_together(renderer_config, store):
    app = build_app(renderer_config(scheduler="batch", batch_window_ms=3, size=64))
    async with app.running() as address, grpc.aio.insecure_channel(address) as channel:
        stub = renderer_pb2_grpc.RendererStub(channel)
        ids = [await store.create() for _ in range(2)]
        streams = [await Stream.open(stub, start(ids[0]))]
        await asyncio.sleep(0.317)  # the second session joins at another phase of the frame clock
        streams.append(await Stream.open(stub, start(ids[1])))
        for s in streams:
            await s.wait(lambda s=s: len(s.of("video")) >= 30)
        batches = app.servicer.scheduler.batches
        print(f"\nbatch sizes: {dict(batches)}")
        # both sessions' frames went out together in shared render_batch calls, despite their start phases
        assert batches[2] >= 10 and batches[2] > batches[1], dict(batches)
        for s in streams:
            await s.close()


async def test_session_limit(renderer_config, store):
    app = build_app(renderer_config(max_sessions=1, size=64))
    async with app.running() as address, grpc.aio.insecure_channel(address) as channel:
        stub = renderer_pb2_grpc.RendererStub(channel)
        first = await Stream.open(stub, start(await store.create()))
        await first.wait(lambda: first.of("video"))
        err = await failure(stub, start(await store.create()))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await first.close()
