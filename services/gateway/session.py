"""The session worker: one browser call = one conversation's loop, its face, its peer connection.

A :class:`CallSession` holds

* the peer connection (aiortc): the browser's microphone (48 kHz Opus) goes to the orchestrator's
  :class:`~services.orchestrator.Conversation`; its camera (optional) is decoded and the latest frame kept;
  the replica's audio and video leave on the renderer's clock (:mod:`services.gateway.media`);
* the render link (:mod:`services.gateway.render`): reply speech with word / phoneme timings in, frames and
  re-emitted audio out; listening / idle modes, emotions, and clear-buffer on barge-in;
* the data channel ``parley`` to the page: events out (speaking, captions, latency marks), interactions in
  (interrupt, text message, hang-up);
* the control plane's session host role: interactions from ``{p}conv:{id}:interactions`` (echo, respond,
  interrupt, set_emotion, overwrite / append context, end) and events to ``{p}conv:{id}:events``.

The conversation survives its peer connection: after a network blip the page sends a new offer with the
``resume_id`` it was given and :meth:`CallSession.reconnect` swaps in a new peer connection (aiortc has no
ICE restart) while the conversation, the render stream and the media clock go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from prometheus_client import Counter, Gauge, Histogram

from parley.audio import Audio, encode_frame
from parley.metrics import LATENCY_BUCKETS
from parley.session_store import SessionStore
from parley.v1 import common_pb2, renderer_pb2, tts_pb2
from services.control import streams
from services.gateway.auth import JoinInfo
from services.gateway.echo import EchoSpeaker, SpokenUtterance
from services.gateway.host import SessionHost
from services.gateway.media import (
    CameraSink,
    MediaOut,
    RenderedAudioTrack,
    RenderedVideoTrack,
    read_microphone,
)
from services.gateway.render import GrpcRenderLink, RenderLink, RenderParams
from services.gateway.rtc import ice_servers, prefer_video_codec
from services.orchestrator import (
    Conversation,
    EndOfTurnDetected,
    OrchestratorConfig,
    ReplyAudio,
    ReplyDone,
    ReplyInterrupted,
    ReplyText,
    StageFailed,
    UserSpeechStarted,
    UserSpeechStopped,
    UserTranscript,
)
from services.orchestrator.clients import StageClients
from services.orchestrator.persona import apply_persona_layers

if TYPE_CHECKING:
    from services.gateway.config import GatewayConfig

log = logging.getLogger("parley.gateway.session")

SESSIONS_ACTIVE = Gauge("parley_gateway_sessions_active", "Calls (conversations) this gateway hosts now")
CALLS_TOTAL = Counter("parley_gateway_calls_total", "Calls ended, by reason", ["reason"])
CLIENT_LATENCY = Histogram(
    "parley_gateway_voice_to_face_seconds",
    "End of user speech -> first reply frame with speech; source=client (measured in the browser) or "
    "server (speech end at the gateway -> playback start on the render clock)",
    ["source"], buckets=LATENCY_BUCKETS,
)

MAX_DC_MESSAGE = 16 * 1024


@dataclass
class JoinOptions:
    """What the page asked for in its offer."""

    test_pattern: bool = False


class CallSession:
    """One conversation's call on this gateway (see the module docstring)."""

    def __init__(self, config: GatewayConfig, join: JoinInfo, options: JoinOptions, clients: StageClients,
                 store: SessionStore, redis: Any, renderer_channel: grpc.aio.Channel | None,
                 on_closed: Callable[[CallSession], None] | None = None) -> None:
        self.config = config
        self.join = join
        self.options = options
        self.conversation_id = join.conversation_id
        self.clients = clients
        self.store = store
        self.redis = redis
        self.renderer_channel = renderer_channel
        self.on_closed = on_closed
        self.resume_id = secrets.token_urlsafe(18)
        self.participant_id = "web-" + secrets.token_hex(4)
        self.prefix = config.key_prefix
        self.host = SessionHost(self)
        self.pc: RTCPeerConnection | None = None
        self.dc: Any = None
        self.video_track: RenderedVideoTrack | None = None
        self.media: MediaOut | None = None
        self.render: RenderLink | None = None
        self.conv: Conversation | None = None
        self.camera = CameraSink()
        self.tasks: list[asyncio.Task] = []
        self.pc_tasks: list[asyncio.Task] = []
        self.closed = False
        self.close_reason = ""
        self.connected_once = False
        self.created = time.monotonic()
        self._grace_task: asyncio.Task | None = None
        self._connect_task: asyncio.Task | None = None
        self.utterances: dict[str, SpokenUtterance] = {}
        self.playing: str | None = None
        self._background: set[asyncio.Task] = set()
        self.echo = EchoSpeaker(self)
        self.user_speaking = False
        self._user_started_unix = 0.0
        self._user_stopped_unix = 0.0
        self._mode = renderer_pb2.REPLICA_MODE_IDLE
        self.rtp_origin: int | None = None
        self.stats: dict[str, Any] = {"client_latency_ms": [], "server_latency_ms": [], "mic_frames": 0}

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the conversation (turn + ASR streams) and the render stream; media starts flowing."""
        base = self.config.orchestrator
        conv_config: OrchestratorConfig = apply_persona_layers(
            base.model_copy(update={"persona_prompt": self.join.system_prompt or base.persona_prompt}),
            self.join.spec.get("layers") or {})
        self.conv = Conversation(self.clients, conv_config, self.store, session_id=self.conversation_id)
        self.conv.set_context(self.join.context)
        await self.conv.start()
        await self._open_render()
        self.tasks = [
            asyncio.create_task(self._pump_render(), name=f"render-{self.conversation_id}"),
            asyncio.create_task(self._pump_conversation(), name=f"conv-{self.conversation_id}"),
            asyncio.create_task(self.host.pump(), name=f"interactions-{self.conversation_id}"),
        ]
        await self._publish(streams.REPLICA_JOINED, {})

    async def _open_render(self) -> None:
        cfg = self.config.renderer
        params = RenderParams(session_id=self.conversation_id, replica_id=self.join.replica_id, size=cfg.size,
                              fps=cfg.fps, test_pattern=self.options.test_pattern)
        link: RenderLink | None = None
        if cfg.address and self.renderer_channel is not None:
            link, code = await self._try_grpc(params)
            if link is None and params.replica_id and code in ("NOT_FOUND", "INVALID_ARGUMENT"):
                log.warning("replica unavailable, using the default look", extra={"replica_id": params.replica_id})
                params.replica_id = ""
                link, code = await self._try_grpc(params)
        if link is None:
            raise RuntimeError(f"the renderer service at {cfg.address or '(not configured)'} is unavailable")
        self.render = link
        ready = link.ready
        wrtc = self.config.webrtc
        self.media = MediaOut(ready.audio_sample_rate, ready.fps, wrtc.max_queue_s, wrtc.av_send_delay_ms / 1000)
        log.info("render link open", extra={"conversation_id": self.conversation_id, "kind": link.kind,
                                            "size": ready.width, "fps": ready.fps})

    async def _try_grpc(self, params: RenderParams) -> tuple[RenderLink | None, str]:
        """The renderer's stream, or (None, why)."""
        link = GrpcRenderLink(self.renderer_channel, params, self.config.renderer.connect_timeout_s)
        try:
            await link.start()
            return link, "OK"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            log.warning("renderer refused the stream", extra={"code": code, "error": exc.details()})
        except (TimeoutError, RuntimeError, OSError) as exc:
            code = type(exc).__name__
            log.warning("renderer unavailable", extra={"error": f"{code}: {exc}"})
        await link.close()
        return None, code

    async def negotiate(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        """A new peer connection for ``offer`` (first join or reconnect); returns the answer."""
        old, self.pc = self.pc, None
        if old is not None:
            await self._drop_pc(old)
        if self.media is not None:
            self.media.flush()
        wrtc = self.config.webrtc
        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers(wrtc.ice_servers)))
        self.pc = pc
        self.dc = None

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "audio":
                self.pc_tasks.append(asyncio.create_task(read_microphone(track, self._push_mic)))
            elif track.kind == "video":
                self.pc_tasks.append(asyncio.create_task(self.camera.run(track)))

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            if channel.label != "parley":
                return
            self.dc = channel
            channel.on("message", lambda message: self._on_dc_message(channel, message))
            if channel.readyState == "open":
                self._hello()
            else:
                channel.on("open", self._hello)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc is not self.pc:
                return
            state = pc.connectionState
            log.info("connection state", extra={"conversation_id": self.conversation_id, "state": state})
            if state == "connected":
                self._cancel_grace()
                if not self.connected_once:
                    self.connected_once = True
                    await self._publish(streams.PARTICIPANT_JOINED, {"participant_id": self.participant_id})
                    if self.config.greeting and self.join.greeting and await self.host.first_greeting():
                        self.echo.speak(self.join.greeting, kind="greeting")
            elif state == "failed":  # network trouble: the page may come back with its resume id
                self._start_grace()
            elif state == "closed":  # the browser closed the connection: leaving, unless a new offer follows
                self._start_grace(min(2.0, self.config.webrtc.reconnect_grace_s))

        # The offer's video section binds to this transceiver (and its codec preference) in setRemoteDescription.
        prefer_video_codec(pc.addTransceiver("video", direction="sendrecv"), wrtc.video_codec)
        await pc.setRemoteDescription(offer)
        self.video_track = RenderedVideoTrack(self.media, self._on_rtp_origin)
        pc.addTrack(RenderedAudioTrack(self.media))
        self.video_track.sender = pc.addTrack(self.video_track)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        self._cancel_grace()
        self._connect_task = asyncio.create_task(self._connect_deadline(pc))
        return pc.localDescription

    async def _connect_deadline(self, pc: RTCPeerConnection) -> None:
        await asyncio.sleep(self.config.webrtc.connect_timeout_s)
        if pc is self.pc and pc.connectionState != "connected" and not self.closed:
            log.info("call never connected", extra={"conversation_id": self.conversation_id})
            self._start_grace()

    def _start_grace(self, seconds: float | None = None) -> None:
        if self._grace_task is None or self._grace_task.done():
            grace = self.config.webrtc.reconnect_grace_s if seconds is None else seconds
            self._grace_task = asyncio.create_task(self._grace(grace))

    def _cancel_grace(self) -> None:
        if self._grace_task is not None and not self._grace_task.done():
            self._grace_task.cancel()
        self._grace_task = None

    async def _grace(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.close("connection_lost")

    async def _drop_pc(self, pc: RTCPeerConnection) -> None:
        tasks, self.pc_tasks = self.pc_tasks, []
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await pc.close()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self, reason: str = "hangup") -> None:
        """End the call: peer connection, conversation, render stream; tell the page and the control plane."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.send({"type": "ended", "reason": reason})
        self._cancel_grace()
        if self._connect_task is not None:
            self._connect_task.cancel()
        for task in list(self.echo.tasks):
            task.cancel()
        if self.media is not None:
            self.media.close()
        if self.pc is not None:
            await asyncio.sleep(0.05)  # let the 'ended' message leave
            await self._drop_pc(self.pc)
        if self.conv is not None:
            await self.conv.close()
        if self.render is not None:
            await self.render.close()
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        await asyncio.gather(*(t for t in self.tasks if t is not current), return_exceptions=True)
        if self.connected_once:
            await self._publish(streams.PARTICIPANT_LEFT, {"participant_id": self.participant_id,
                                                           "reason": reason})
        CALLS_TOTAL.labels(reason).inc()
        log.info("call ended", extra={"conversation_id": self.conversation_id, "reason": reason,
                                      "seconds": round(time.monotonic() - self.created, 1)})
        if self.on_closed is not None:
            self.on_closed(self)

    def _spawn(self, coro: Any) -> asyncio.Task:
        """A background task the session keeps a reference to until it is done."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- page (data channel) -----------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        """One JSON message to the page (dropped while no data channel is open)."""
        dc = self.dc
        if dc is not None and dc.readyState == "open":
            with contextlib.suppress(Exception):
                dc.send(json.dumps(message, separators=(",", ":")))

    def _hello(self) -> None:
        ready = self.render.ready if self.render else None
        self.send({"type": "hello", "conversation_id": self.conversation_id, "resume_id": self.resume_id,
                   "renderer": self.render.kind if self.render else "", "fps": ready.fps if ready else 0,
                   "size": ready.width if ready else 0, "test_pattern": self.options.test_pattern,
                   "rtp_origin": self.rtp_origin, "clock_rate": 90_000})

    def _on_rtp_origin(self, origin: int) -> None:
        self.rtp_origin = origin
        self.send({"type": "clock", "rtp_origin": origin, "clock_rate": 90_000})

    def _on_dc_message(self, channel: Any, message: Any) -> None:
        if isinstance(message, bytes) or len(message) > MAX_DC_MESSAGE:
            self.send({"type": "error", "message": "data channel messages must be JSON text under 16 KiB"})
            return
        try:
            msg = json.loads(message)
            kind = msg["type"]
        except (ValueError, KeyError, TypeError):
            self.send({"type": "error", "message": "malformed message: expected JSON with a 'type'"})
            return
        if kind == "interrupt":
            self._spawn(self.interrupt("user_request"))
        elif kind == "message":
            text = str(msg.get("text") or "").strip()[: self.config.max_text_chars]
            if text:
                self._spawn(self._typed(text))
        elif kind == "hangup":
            self._spawn(self.close("hangup"))
        elif kind == "latency":
            ms = msg.get("voice_to_face_ms")
            if isinstance(ms, (int, float)) and 0 < ms < 120_000:
                CLIENT_LATENCY.labels("client").observe(ms / 1000)
                self.stats["client_latency_ms"].append(round(float(ms), 1))
        elif kind == "ping":
            self.send({"type": "pong", "t": msg.get("t"), "server_time": time.time()})
        else:
            self.send({"type": "error", "message": f"unknown message type {str(kind)[:40]!r}"})

    async def _typed(self, text: str) -> None:
        if self.replica_busy():  # a new message supersedes what the replica is saying
            await self.interrupt("new_message")
        self.send({"type": "transcript", "role": "user", "text": text, "final": True, "typed": True})
        await self._publish(streams.UTTERANCE, {"role": "user", "text": text, "start_time": time.time(),
                                                "end_time": time.time()})
        await self.conv.respond(text)

    # -- microphone ------------------------------------------------------------------------------------
    async def _push_mic(self, audio: Audio) -> None:
        self.stats["mic_frames"] += 1
        if self.conv is not None and not self.conv.closed:
            await self.conv.push_audio(audio)

    # -- replica speech ----------------------------------------------------------------------------------
    def _render_send(self, request: renderer_pb2.RenderRequest) -> None:
        if self.render is not None:
            self.render.send(request)

    def _set_mode(self, mode: int) -> None:
        if mode != self._mode:
            self._mode = mode
            self._render_send(renderer_pb2.RenderRequest(mode=renderer_pb2.RenderSetMode(mode=mode)))

    def replica_busy(self) -> bool:
        """The replica is speaking, about to, or still generating what it will say."""
        return (self.playing is not None or bool(self.echo.tasks)
                or any(not u.done for u in self.utterances.values())
                or (self.conv is not None and self.conv.replying))

    async def interrupt(self, reason: str, stop_reply: bool = True) -> None:
        """Stop the replica now: cancel echo speech and the reply, clear the renderer's buffer.

        ``stop_reply=False`` on barge-in: the orchestrator cancels its own reply when it hears the user."""
        for task in list(self.echo.tasks):
            task.cancel()
        self._render_send(renderer_pb2.RenderRequest(clear=renderer_pb2.RenderClearBuffer()))
        if stop_reply and self.conv is not None and self.conv.replying:
            await self.conv.interrupt()
        for utt in self.utterances.values():
            utt.done = True
        log.info("interrupted", extra={"conversation_id": self.conversation_id, "reason": reason})

    # -- conversation events -----------------------------------------------------------------------------
    async def _pump_conversation(self) -> None:
        async for event in self.conv.events():
            try:
                await self._on_conversation_event(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("conversation event failed", extra={"conversation_id": self.conversation_id})

    async def _on_conversation_event(self, event: Any) -> None:
        if isinstance(event, UserSpeechStarted):
            self.user_speaking = True
            self._user_started_unix = time.time()
            self.send({"type": "user.started_speaking"})
            self._set_mode(renderer_pb2.REPLICA_MODE_LISTENING)
            await self._publish(streams.USER_STARTED, {})
            if self.config.orchestrator.barge_in and self.replica_busy():
                await self.interrupt("barge_in", stop_reply=False)
        elif isinstance(event, UserSpeechStopped):
            self.user_speaking = False
            self._user_stopped_unix = time.time()
            self.send({"type": "user.stopped_speaking"})
            self._render_send(renderer_pb2.RenderRequest(user_paused=renderer_pb2.RenderUserPaused()))
            await self._publish(streams.USER_STOPPED, {})
        elif isinstance(event, EndOfTurnDetected):
            self.send({"type": "end_of_turn", "probability": round(event.probability, 3), "reason": event.reason})
        elif isinstance(event, UserTranscript):
            self.send({"type": "transcript", "role": "user", "text": event.text, "final": event.final,
                       "turn_id": event.turn_id})
            if event.final and event.text:
                await self._publish(streams.UTTERANCE, {
                    "role": "user", "text": event.text, "start_time": self._user_started_unix,
                    "end_time": self._user_stopped_unix or time.time()})
        elif isinstance(event, ReplyText):
            self.send({"type": "reply.text", "turn_id": event.turn_id, "delta": event.delta})
        elif isinstance(event, ReplyAudio):
            uid = f"turn-{event.turn_id}"
            utt = self.utterances.get(uid)
            if utt is None:
                utt = self.utterances[uid] = SpokenUtterance(uid, "reply", turn_id=event.turn_id,
                                                             first_audio_wall=event.wall_time)
            speech = tts_pb2.SpeechAudio(
                audio=encode_frame(event.audio.samples, event.audio.sample_rate, event.offset_us),
                text=event.text,
                words=[common_pb2.WordTiming(word=w["word"], start_us=w["start_us"], end_us=w["end_us"])
                       for w in event.words],
                phonemes=[common_pb2.PhonemeTiming(phoneme=p["phoneme"], start_us=p["start_us"],
                                                   end_us=p["end_us"]) for p in event.phonemes])
            self._render_send(renderer_pb2.RenderRequest(speech=renderer_pb2.RenderSpeech(utterance_id=uid,
                                                                                          speech=speech)))
        elif isinstance(event, ReplyDone):
            uid = f"turn-{event.turn_id}"
            self._render_send(renderer_pb2.RenderRequest(speech_end=renderer_pb2.RenderSpeechEnd(utterance_id=uid)))
            utt = self.utterances.setdefault(uid, SpokenUtterance(uid, "reply", turn_id=event.turn_id))
            utt.text, utt.latency, utt.done = event.reply_text, dict(event.latency), True
            self.send({"type": "reply.done", "turn_id": event.turn_id, "text": event.reply_text,
                       "user_text": event.user_text, "latency": event.latency})
            self._server_latency(utt)
        elif isinstance(event, ReplyInterrupted):
            self._render_send(renderer_pb2.RenderRequest(clear=renderer_pb2.RenderClearBuffer()))
            utt = self.utterances.get(f"turn-{event.turn_id}")
            if utt is not None:
                utt.done = True
            self.send({"type": "replica.interrupted", "turn_id": event.turn_id, "heard_text": event.heard_text})
        elif isinstance(event, StageFailed):
            log.warning("stage failed", extra={"conversation_id": self.conversation_id, "stage": event.stage,
                                               "code": event.code, "error": event.message})
            self.send({"type": "error", "message": f"{event.stage} failed ({event.code}): {event.message}"})

    def _server_latency(self, utt: SpokenUtterance) -> None:
        """Speech end -> playback start on the render clock, once both the reply's breakdown and its start
        are known (``total_ms`` ends at the first TTS audio; the renderer's prebuffer and queue come after)."""
        total = utt.latency.get("total_ms", -1)
        if utt.kind != "reply" or total < 0 or utt.started_wall is None or utt.first_audio_wall is None:
            return
        ms = total + 1000 * (utt.started_wall - utt.first_audio_wall)
        if "server_voice_to_face_ms" in utt.latency:
            return
        utt.latency["server_voice_to_face_ms"] = round(ms, 1)
        CLIENT_LATENCY.labels("server").observe(ms / 1000)
        self.stats["server_latency_ms"].append(round(ms, 1))
        self.send({"type": "latency.server", "turn_id": utt.turn_id, "voice_to_face_ms": round(ms, 1),
                   "breakdown": utt.latency})

    # -- render events -----------------------------------------------------------------------------------
    async def _pump_render(self) -> None:
        while not self.closed:
            link = self.render
            try:
                async for event in link.events():
                    self._on_render_event(event)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                if self.closed:
                    return
                log.warning("render stream failed", extra={"conversation_id": self.conversation_id,
                                                           "code": exc.code().name, "error": exc.details()})
            except Exception:
                if self.closed:
                    return
                log.exception("render stream failed", extra={"conversation_id": self.conversation_id})
            if self.closed:
                return
            # The render stream ended under a live call: tell the page and end the call cleanly.
            self.send({"type": "error", "message": "the renderer stopped; the call has ended"})
            with contextlib.suppress(Exception):
                await link.close()
            await self.close("renderer_failed")
            return

    def _on_render_event(self, event: renderer_pb2.RenderEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "video":
            self.media.push_video(event.video)
        elif kind == "audio":
            self.media.push_audio(event.audio.timestamp_us, event.audio.data)
        elif kind == "playback_started":
            ps = event.playback_started
            self.playing = ps.utterance_id
            utt = self.utterances.get(ps.utterance_id)
            if utt is not None:
                utt.started_wall, utt.started_unix = time.monotonic(), time.time()
                self._server_latency(utt)
            self.send({"type": "replica.started_speaking", "utterance_id": ps.utterance_id,
                       "pts_us": ps.pts_us, "turn_id": utt.turn_id if utt else 0})
            self._spawn(self._publish(streams.REPLICA_STARTED, {"utterance_id": ps.utterance_id}))
        elif kind == "playback_finished":
            pf = event.playback_finished
            self._finished(pf.utterance_id, pf.pts_us, [w.word for w in pf.words], interrupted=False)
        elif kind == "cleared":
            ack = event.cleared
            if ack.utterance_id:
                self._finished(ack.utterance_id, ack.pts_us, [w.word for w in ack.words_played],
                               interrupted=True, played_us=ack.played_us)
            for uid in ack.dropped_utterance_ids:
                self.utterances.pop(uid, None)

    def _finished(self, uid: str, pts_us: int, words: list[str], interrupted: bool, played_us: int = 0) -> None:
        if self.playing == uid:
            self.playing = None
        utt = self.utterances.pop(uid, None)
        text = (utt.text if utt and utt.text and not interrupted else " ".join(words)).strip()
        self.send({"type": "replica.stopped_speaking", "utterance_id": uid, "pts_us": pts_us,
                   "interrupted": interrupted, "played_us": played_us, "text": text})
        self._set_mode(renderer_pb2.REPLICA_MODE_LISTENING if self.user_speaking else renderer_pb2.REPLICA_MODE_IDLE)
        start = utt.started_unix if utt and utt.started_unix else time.time()
        self._spawn(self._replica_said(utt, text, start, interrupted))

    async def _replica_said(self, utt: SpokenUtterance | None, text: str, start: float, interrupted: bool) -> None:
        await self._publish(streams.REPLICA_STOPPED, {"interrupted": interrupted})
        if text:
            await self._publish(streams.UTTERANCE, {"role": "replica", "text": text, "start_time": start,
                                                    "end_time": time.time()})
        if utt is not None and utt.kind == "echo" and text:
            # Replies are recorded by the orchestrator; echo / greeting speech joins the history here.
            with contextlib.suppress(Exception):
                await self.store.append_utterance(self.conversation_id, "replica", text, echo=True,
                                                  interrupted=interrupted)

    # -- control plane (session host) --------------------------------------------------------------------
    async def _publish(self, kind: str, data: dict[str, Any]) -> None:
        try:
            await streams.publish_event(self.redis, self.conversation_id, kind, data, self.prefix)
        except Exception as exc:  # the call goes on without the event stream
            log.warning("event publish failed", extra={"kind": kind, "error": f"{type(exc).__name__}: {exc}"})
