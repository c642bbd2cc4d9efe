"""Replica speech that bypasses the LLM: the greeting, echo text (TTS only) and recorded audio (as is).

Each becomes an utterance on the call's render stream (``greeting-N`` / ``echo-N`` / ``audio-N``), played on
the renderer's clock like a reply, interruptible like a reply.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from parley.audio import Audio, encode_frame
from parley.v1 import common_pb2, renderer_pb2, tts_pb2
from services.orchestrator.clients import RequestStream

if TYPE_CHECKING:
    from services.gateway.session import CallSession


@dataclass
class SpokenUtterance:
    """Something the replica says: a reply turn or an echo / greeting."""

    utterance_id: str
    kind: str  # "reply" | "echo"
    text: str = ""
    turn_id: int = 0
    first_audio_wall: float | None = None
    started_wall: float | None = None
    started_unix: float | None = None
    latency: dict[str, float] = field(default_factory=dict)
    done: bool = False



class EchoSpeaker:
    """Speaks text or plays audio on one call without going through the LLM."""

    def __init__(self, call: CallSession) -> None:
        self.call = call
        self.tasks: set[asyncio.Task] = set()  # syntheses in flight
        self.seq = 0

    def speak(self, text: str, kind: str = "echo") -> str:
        """Say ``text`` with TTS, bypassing the LLM (echo interactions, greeting)."""
        self.seq += 1
        uid = f"{kind}-{self.seq}"
        self.call.utterances[uid] = SpokenUtterance(uid, "echo", text=text)
        task = asyncio.create_task(self._speak(uid, text))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return uid

    async def _speak(self, uid: str, text: str) -> None:
        ref = common_pb2.SessionRef(session_id=self.call.conversation_id, trace_id=f"{self.call.conversation_id}:{uid}")
        requests = RequestStream(tts_pb2.TtsRequest(start=tts_pb2.TtsStart(session=ref,
                                                                        voice=self.call.conv.config.voice)))
        requests.send(tts_pb2.TtsRequest(text=tts_pb2.TextPiece(text=text)))
        requests.send(tts_pb2.TtsRequest(flush=tts_pb2.TtsFlush()))
        requests.close()
        call = self.call.clients.tts.Synthesize(requests, timeout=self.call.conv.config.rpc_timeout_s)
        try:
            async for event in call:
                if event.HasField("audio"):
                    self.call._render_send(renderer_pb2.RenderRequest(
                        speech=renderer_pb2.RenderSpeech(utterance_id=uid, speech=event.audio)))
            self.call._render_send(renderer_pb2.RenderRequest(speech_end=renderer_pb2.RenderSpeechEnd(utterance_id=uid)))
        except asyncio.CancelledError:
            call.cancel()
            raise
        except grpc.aio.AioRpcError as exc:
            self.call.send({"type": "error", "message": f"speech synthesis failed: {exc.details()}"})
        finally:
            if uid in self.call.utterances:
                self.call.utterances[uid].done = True

    def play_audio(self, audio: Audio) -> str:
        """Play recorded speech as is (echo with audio)."""
        self.seq += 1
        uid = f"audio-{self.seq}"
        self.call.utterances[uid] = SpokenUtterance(uid, "echo", done=True)
        step = audio.sample_rate * 4
        for start in range(0, len(audio.samples), step):
            frame = encode_frame(audio.samples[start:start + step], audio.sample_rate,
                                 round(start * 1e6 / audio.sample_rate))
            self.call._render_send(renderer_pb2.RenderRequest(speech=renderer_pb2.RenderSpeech(
                utterance_id=uid, speech=tts_pb2.SpeechAudio(audio=frame))))
        self.call._render_send(renderer_pb2.RenderRequest(speech_end=renderer_pb2.RenderSpeechEnd(utterance_id=uid)))
        return uid
