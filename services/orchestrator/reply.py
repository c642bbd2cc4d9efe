"""One replica reply: the LLM token stream feeds the TTS stream clause by clause; cancellable at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from parley.audio import Audio, pcm16_to_float
from parley.v1 import common_pb2, llm_pb2, tts_pb2
from services.orchestrator.clients import RequestStream, StageClients
from services.orchestrator.config import OrchestratorConfig
from services.orchestrator.events import Event, ReplyAudio, ReplyText
from services.orchestrator.latency import TurnTimer


@dataclass
class SpokenWord:
    word: str
    start_us: int
    end_us: int


@dataclass
class ReplyResult:
    """What the reply produced: the LLM text, the audio duration and the timed words spoken."""

    text: str = ""
    audio_us: int = 0
    words: list[SpokenWord] = field(default_factory=list)
    llm_done: llm_pb2.GenerationDone | None = None
    tts_done: tts_pb2.SynthesisDone | None = None

    def heard_text(self, played_us: int) -> str:
        """The words whose audio had been played by ``played_us`` on the reply timeline."""
        return " ".join(w.word for w in self.words if w.end_us <= played_us)


class Reply:
    """Runs LLM -> TTS for one turn. ``run()`` returns when the audio is synthesized; cancel its task
    to stop both streams (the gRPC calls are cancelled, so the services stop generating).

    With ``echo_text`` the LLM is skipped and the text is spoken as is (the "echo" interaction).
    ``persona_prompt`` overrides the configured one (the conversation's persona plus its context).
    """

    def __init__(
        self,
        clients: StageClients,
        config: OrchestratorConfig,
        session: common_pb2.SessionRef,
        turn_id: int,
        messages: list[dict[str, str]],
        timer: TurnTimer,
        emit: Callable[[Event], None],
        *,
        echo_text: str | None = None,
        persona_prompt: str | None = None,
    ) -> None:
        self.clients = clients
        self.echo_text = echo_text
        self.persona_prompt = persona_prompt
        self.config = config
        self.session = session
        self.turn_id = turn_id
        self.messages = messages
        self.timer = timer
        self.emit = emit
        self.result = ReplyResult()
        self.first_audio_wall: float | None = None
        self.llm_call: Any = None
        self.tts_call: Any = None

    def _chat_request(self) -> llm_pb2.LlmRequest:
        return llm_pb2.LlmRequest(
            chat=llm_pb2.ChatRequest(
                session=self.session,
                persona_prompt=self.persona_prompt if self.persona_prompt is not None else self.config.persona_prompt,
                messages=[llm_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in self.messages],
                sampling=llm_pb2.Sampling(temperature=self.config.temperature, top_p=self.config.top_p,
                                          max_tokens=self.config.max_tokens),
                model=self.config.llm_model,
            )
        )

    async def run(self) -> ReplyResult:
        tts_requests = RequestStream(
            tts_pb2.TtsRequest(start=tts_pb2.TtsStart(session=self.session, voice=self.config.voice,
                                                      speed=self.config.speed))
        )
        timeout = self.config.rpc_timeout_s
        self.tts_call = self.clients.tts.Synthesize(tts_requests, timeout=timeout)
        calls = [self.tts_call]
        if self.echo_text is not None:
            self.result.text = self.echo_text
            tts_requests.send(tts_pb2.TtsRequest(text=tts_pb2.TextPiece(text=self.echo_text)))
            tts_requests.send(tts_pb2.TtsRequest(flush=tts_pb2.TtsFlush()))
            tts_requests.close()
            source = None
        else:
            llm_requests = RequestStream(self._chat_request())
            self.timer.llm_request = time.monotonic()
            self.llm_call = self.clients.llm.Generate(llm_requests, timeout=timeout)
            calls.append(self.llm_call)
            source = self._pump_llm(tts_requests)
        try:
            await asyncio.gather(*(c for c in (source, self._pump_tts()) if c is not None))
        finally:
            if self.echo_text is None:
                llm_requests.close()
            tts_requests.close()
            for call in calls:
                if not call.done():
                    call.cancel()
        return self.result

    async def _pump_llm(self, tts_requests: RequestStream) -> None:
        async for event in self.llm_call:
            if event.HasField("token"):
                now = time.monotonic()
                if self.timer.llm_first_token is None:
                    self.timer.llm_first_token = now
                self.result.text += event.token.text
                tts_requests.send(tts_pb2.TtsRequest(text=tts_pb2.TextPiece(text=event.token.text)))
                self.emit(ReplyText(now, self.turn_id, event.token.text))
            elif event.HasField("done"):
                self.result.llm_done = event.done
                self.timer.server_ms["llm"] = event.done.ttft_ms
        tts_requests.send(tts_pb2.TtsRequest(flush=tts_pb2.TtsFlush()))
        tts_requests.close()

    async def _pump_tts(self) -> None:
        async for event in self.tts_call:
            if event.HasField("audio"):
                speech = event.audio
                frame = speech.audio
                now = time.monotonic()
                if self.first_audio_wall is None:
                    self.first_audio_wall = now
                    self.timer.tts_first_audio = now
                audio = Audio(pcm16_to_float(frame.data), frame.sample_rate, frame.timestamp_us)
                self.result.audio_us = max(self.result.audio_us, audio.end_us)
                words = [{"word": w.word, "start_us": w.start_us, "end_us": w.end_us} for w in speech.words]
                self.result.words.extend(SpokenWord(**w) for w in words)
                phonemes = [
                    {"phoneme": p.phoneme, "start_us": p.start_us, "end_us": p.end_us} for p in speech.phonemes
                ]
                self.emit(ReplyAudio(now, self.turn_id, audio, frame.timestamp_us, speech.text, words, phonemes))
            elif event.HasField("done"):
                self.result.tts_done = event.done
                self.timer.server_ms["tts"] = event.done.first_audio_ms


def rpc_error_text(exc: BaseException) -> tuple[str, str]:
    """(status code name, message) of a failed stage call."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name, exc.details() or ""
    return "INTERNAL", f"{type(exc).__name__}: {exc}"
