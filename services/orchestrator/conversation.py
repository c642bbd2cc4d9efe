"""A live conversation: streams user audio to turn-taking and ASR, replies on end of turn, barge-in.

Usage::

    conv = Conversation(clients, config, store)
    await conv.start()
    await conv.push_audio(audio)          # as the microphone delivers it, any rate
    async for event in conv.events(): ...  # UserSpeechStarted, UserTranscript, ReplyAudio, ReplyDone ...
    await conv.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator

import numpy as np

from parley.audio import Audio, Framer, StreamResampler, encode_frame
from parley.session_store import SessionStore
from parley.v1 import asr_pb2, common_pb2, turn_pb2
from services.orchestrator.clients import RequestStream, StageClients
from services.orchestrator.config import OrchestratorConfig
from services.orchestrator.events import (
    EndOfTurnDetected,
    Event,
    ReplyDone,
    ReplyInterrupted,
    StageFailed,
    UserSpeechStarted,
    UserSpeechStopped,
    UserTranscript,
)
from services.orchestrator.latency import FrameClock, TurnTimer
from services.orchestrator.reply import Reply, rpc_error_text

log = logging.getLogger("parley.orchestrator")


class Conversation:
    """One session's loop over the stage services. Not thread-safe; use from one event loop."""

    def __init__(
        self,
        clients: StageClients,
        config: OrchestratorConfig,
        store: SessionStore,
        session_id: str | None = None,
    ) -> None:
        self.clients = clients
        self.config = config
        self.store = store
        self.session_id = session_id or uuid.uuid4().hex
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        rate = config.input_sample_rate
        self._framer = Framer(rate * config.frame_ms // 1000, rate)
        self._resampler = StreamResampler(rate)
        self._samples_sent = 0
        self._clock = FrameClock()
        self._turn_req: RequestStream | None = None
        self._asr_req: RequestStream | None = None
        self._calls: list = []
        self._tasks: list[asyncio.Task] = []
        self._timer: TurnTimer | None = None
        self._finalize_sent: float | None = None
        self._turn_id = 0
        self._reply: Reply | None = None
        self._reply_task: asyncio.Task | None = None
        self._reply_user_text = ""
        self._playout_end = 0.0
        self.last_reply: Reply | None = None
        self.context = ""  # extra LLM context (persona context, interactions append / overwrite it)
        self.closed = False

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> str:
        """Create the session in Redis (if new) and open the turn and ASR streams; returns the id."""
        if not await self.store.exists(self.session_id):
            await self.store.create(self.session_id, persona_prompt=self.config.persona_prompt)
        ref = self._ref()
        turn_config = turn_pb2.TurnConfig(end_of_turn_threshold=self.config.end_of_turn_threshold,
                                          silence_timeout_ms=self.config.silence_timeout_ms)
        self._turn_req = RequestStream(turn_pb2.TurnRequest(start=turn_pb2.TurnStart(session=ref, config=turn_config)))
        self._asr_req = RequestStream(asr_pb2.AsrRequest(start=asr_pb2.AsrStart(
            session=ref, language=self.config.language, partials=self.config.asr_partials)))
        turn_call = self.clients.turn.Detect(self._turn_req)
        asr_call = self.clients.asr.Transcribe(self._asr_req)
        self._calls = [turn_call, asr_call]
        self._tasks = [
            asyncio.create_task(self._guard("turn", self._pump_turn(turn_call))),
            asyncio.create_task(self._guard("asr", self._pump_asr(asr_call))),
        ]
        return self.session_id

    async def close(self) -> None:
        """Cancel any reply, half-close and cancel the input streams, end the event stream."""
        if self.closed:
            return
        self.closed = True
        await self._cancel_reply()
        for req in (self._turn_req, self._asr_req):
            if req:
                req.close()
        for call in self._calls:
            call.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.store.update(self.session_id, status="ended")
        self._events.put_nowait(None)

    async def events(self) -> AsyncIterator[Event]:
        """Every event of the conversation, in order, until ``close()``."""
        while True:
            event = await self._events.get()
            if event is None:
                return
            yield event

    # -- input -----------------------------------------------------------------------------------
    async def push_audio(self, audio: Audio) -> None:
        """Send microphone audio (any rate, consecutive chunks) to turn-taking and ASR."""
        if self.closed:
            return
        rate = self.config.input_sample_rate
        samples = self._resampler.push(audio.samples, audio.sample_rate)
        chunk = Audio(samples, rate, self._us(self._samples_sent))
        self._samples_sent += len(samples)
        for frame in self._framer.push(chunk):
            message = encode_frame(frame.samples, rate, frame.timestamp_us)
            self._turn_req.send(turn_pb2.TurnRequest(audio=message))
            self._asr_req.send(asr_pb2.AsrRequest(audio=message))
            self._clock.sent(frame.timestamp_us, frame.end_us, time.monotonic())
        await asyncio.sleep(0)

    async def push_silence(self, seconds: float) -> None:
        """Convenience: push ``seconds`` of silence (keeps the session clock moving)."""
        rate = self.config.input_sample_rate
        await self.push_audio(Audio(np.zeros(round(seconds * rate), np.float32), rate))

    async def respond(self, text: str) -> None:
        """Treat ``text`` as a finished user utterance (typed input, API injection)."""
        await self._user_said(text, TurnTimer())

    async def say(self, text: str) -> None:
        """Speak ``text`` as the replica, bypassing the LLM (echo); interrupts a reply in progress."""
        await self._barge_in()
        await self._start_reply(self._reply_user_text, [], TurnTimer(), echo_text=text)

    async def interrupt(self) -> None:
        """Stop the replica now, as a barge-in would."""
        await self._barge_in()

    def set_context(self, text: str, append: bool = False) -> None:
        """Overwrite (or append to) the extra context the LLM gets with the persona prompt."""
        self.context = f"{self.context}\n{text}".strip() if append else text.strip()

    @property
    def persona_prompt(self) -> str:
        """The system prompt sent with each LLM request: persona plus context."""
        return "\n\n".join(p for p in (self.config.persona_prompt, self.context) if p)

    @property
    def replying(self) -> bool:
        """True while a reply is being generated or its audio is still playing out."""
        busy = self._reply_task is not None and not self._reply_task.done()
        return busy or time.monotonic() < self._playout_end

    # -- stage event pumps -------------------------------------------------------------------------
    async def _guard(self, stage: str, pump) -> None:
        try:
            await pump
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.closed:
                return
            code, message = rpc_error_text(exc)
            log.warning("stage stream failed", extra={"stage": stage, "code": code, "error": message})
            self._emit(StageFailed(time.monotonic(), stage, code, message))

    async def _pump_turn(self, call) -> None:
        async for event in call:
            now = time.monotonic()
            kind = event.WhichOneof("event")
            if kind == "speech_started":
                self._emit(UserSpeechStarted(now, event.speech_started.speech_start_us))
                self._asr_req.send(
                    self._asr_control(asr_pb2.AsrControl.SPEECH_RESUMED, event.speech_started.speech_start_us)
                )
                if self.config.barge_in and self.replying:
                    await self._barge_in()
            elif kind == "speech_stopped":
                end_us = event.speech_stopped.speech_end_us
                self._emit(UserSpeechStopped(now, end_us))
                self._timer = TurnTimer(speech_end=self._clock.wall_at(end_us))
                self._asr_req.send(self._asr_control(asr_pb2.AsrControl.SPEECH_ENDED, end_us))
            elif kind == "end_of_turn":
                eot = event.end_of_turn
                timer = self._timer or TurnTimer(speech_end=self._clock.wall_at(eot.speech_end_us))
                timer.end_of_turn = now
                # The turn stage's cost is the wait from the end of speech to its decision (silence it must
                # hear plus model time not hidden by its speculative run), as seen by this client.
                if timer.speech_end is not None:
                    timer.server_ms["turn"] = 1000 * (now - timer.speech_end)
                self._emit(EndOfTurnDetected(now, eot.probability, eot.reason, eot.speech_end_us))
                self._finalize_sent = time.monotonic()
                self._asr_req.send(self._asr_control(asr_pb2.AsrControl.FINALIZE, eot.speech_end_us))

    async def _pump_asr(self, call) -> None:
        async for event in call:
            now = time.monotonic()
            if event.HasField("partial"):
                self._emit(UserTranscript(now, event.partial.text, final=False, turn_id=self._turn_id + 1))
            elif event.HasField("final"):
                timer = self._timer or TurnTimer()
                self._timer = None
                timer.asr_final = now
                if self._finalize_sent is not None:
                    timer.server_ms["asr"] = 1000 * (now - self._finalize_sent)
                text = event.final.text.strip()
                self._emit(UserTranscript(now, text, final=True, turn_id=self._turn_id + 1))
                if text:
                    await self._user_said(text, timer)

    # -- replies ---------------------------------------------------------------------------------
    async def _user_said(self, text: str, timer: TurnTimer) -> None:
        await self._cancel_reply()
        history = await self._history()
        await self.store.append_utterance(self.session_id, "user", text)
        await self._start_reply(text, [*history, {"role": "user", "content": text}], timer)

    async def _start_reply(self, user_text: str, messages: list[dict[str, str]], timer: TurnTimer,
                           echo_text: str | None = None) -> None:
        self._turn_id += 1
        reply = Reply(self.clients, self.config, self._ref(), self._turn_id, messages, timer, self._emit_reply,
                      echo_text=echo_text, persona_prompt=self.persona_prompt or None)
        self._reply, self.last_reply, self._reply_user_text = reply, reply, user_text
        self._reply_task = asyncio.create_task(self._run_reply(reply, timer))

    async def _run_reply(self, reply: Reply, timer: TurnTimer) -> None:
        try:
            result = await reply.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            code, message = rpc_error_text(exc)
            self._emit(StageFailed(time.monotonic(), "reply", code, message))
            return
        latency = timer.breakdown()
        await self.store.append_utterance(self.session_id, "replica", result.text.strip(), turn_id=reply.turn_id)
        await self.store.append_turn(
            self.session_id,
            {"turn_id": reply.turn_id, "user": self._reply_user_text, "reply": result.text.strip(),
             "interrupted": False, "latency": latency},
        )
        self._emit(ReplyDone(time.monotonic(), reply.turn_id, self._reply_user_text, result.text.strip(), latency))

    def _emit_reply(self, event: Event) -> None:
        reply = self._reply
        if reply is not None and reply.first_audio_wall is not None and hasattr(event, "audio"):
            self._playout_end = reply.first_audio_wall + reply.result.audio_us / 1e6
        self._emit(event)

    async def _cancel_reply(self) -> None:
        task, self._reply_task = self._reply_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _barge_in(self) -> None:
        reply = self._reply
        if reply is None or not self.replying:
            return
        await self._cancel_reply()
        played_us = 0
        if reply.first_audio_wall is not None:
            played_us = min(reply.result.audio_us, int(1e6 * (time.monotonic() - reply.first_audio_wall)))
        heard = reply.result.heard_text(played_us)
        self._playout_end = 0.0
        self._reply = None
        self._emit(ReplyInterrupted(time.monotonic(), reply.turn_id, heard, played_us))
        await self.store.append_utterance(
            self.session_id, "replica", heard, turn_id=reply.turn_id, interrupted=True
        )
        await self.store.append_turn(
            self.session_id,
            {"turn_id": reply.turn_id, "user": self._reply_user_text, "reply": reply.result.text.strip(),
             "heard": heard, "interrupted": True, "latency": reply.timer.breakdown()},
        )

    async def _history(self) -> list[dict[str, str]]:
        if not self.config.history_turns:
            return []
        items = await self.store.transcript(self.session_id)
        out = []
        for item in items[-self.config.history_turns:]:
            if item.get("text"):
                out.append({"role": "user" if item["role"] == "user" else "assistant", "content": item["text"]})
        return out

    # -- helpers ---------------------------------------------------------------------------------
    def _emit(self, event: Event) -> None:
        if not self.closed:
            self._events.put_nowait(event)

    def _ref(self) -> common_pb2.SessionRef:
        return common_pb2.SessionRef(session_id=self.session_id, trace_id=f"{self.session_id}:{self._turn_id}")

    def _us(self, samples: int) -> int:
        return round(1e6 * samples / self.config.input_sample_rate)

    @staticmethod
    def _asr_control(kind: int, at_us: int) -> asr_pb2.AsrRequest:
        return asr_pb2.AsrRequest(control=asr_pb2.AsrControl(kind=kind, at_us=at_us))
