"""The gateway as the conversation's session host for the control plane.

:class:`SessionHost` reads the conversation's interactions stream (``parley:conv:{id}:interactions``, see
:mod:`services.control.streams`) and applies each one to the live call: echo (text or audio), respond,
interrupt, overwrite / append context, set emotion, end. It resumes after the last interaction it applied
(kept in Redis), and skips stale echo / respond / interrupt requests queued long before the first join.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from parley.audio import Audio
from parley.v1 import renderer_pb2
from services.control import streams

if TYPE_CHECKING:
    from services.gateway.session import CallSession

EMOTIONS = {
    "neutral": renderer_pb2.REPLICA_EMOTION_NEUTRAL, "joy": renderer_pb2.REPLICA_EMOTION_JOY,
    "happy": renderer_pb2.REPLICA_EMOTION_JOY, "sorrow": renderer_pb2.REPLICA_EMOTION_SORROW,
    "sad": renderer_pb2.REPLICA_EMOTION_SORROW, "anger": renderer_pb2.REPLICA_EMOTION_ANGER,
    "angry": renderer_pb2.REPLICA_EMOTION_ANGER, "surprise": renderer_pb2.REPLICA_EMOTION_SURPRISE,
    "surprised": renderer_pb2.REPLICA_EMOTION_SURPRISE,
}
"""Control-plane emotion names (and their accepted synonyms) to the renderer's."""

log = logging.getLogger("parley.gateway.host")


class SessionHost:
    """Applies control-plane interactions to one call."""

    def __init__(self, call: CallSession) -> None:
        self.call = call
        self.key = f"{call.prefix}gateway:conv:{call.conversation_id}"

    async def first_greeting(self) -> bool:
        """True once per conversation (a rejoin is not greeted again)."""
        try:
            return bool(await self.call.redis.hsetnx(self.key, "greeted", "1"))
        except Exception:
            return True

    async def pump(self) -> None:
        """Apply the conversation's interactions as they arrive, resuming after the last one applied."""
        key = streams.interactions_key(self.call.conversation_id, self.call.prefix)
        host_key = self.key
        last = await self.call.redis.hget(host_key, "interactions_last_id") or "0"
        first_join = last == "0"
        while not self.call.closed:
            try:
                reply = await self.call.redis.xread({key: last}, count=50, block=1000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reading interactions failed", extra={"error": f"{type(exc).__name__}: {exc}"})
                await asyncio.sleep(1.0)
                continue
            for _key, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    kind, data, ts = streams.decode_entry(fields)
                    stale = first_join and ts and time.time() - ts > self.call.config.stale_interaction_s
                    try:
                        await self.apply(kind, data, stale=bool(stale))
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception("interaction failed", extra={"kind": kind})
                async with self.call.redis.pipeline(transaction=False) as pipe:
                    pipe.hset(host_key, "interactions_last_id", last)
                    pipe.expire(host_key, 7 * 24 * 3600)
                    await pipe.execute()

    async def apply(self, kind: str, data: dict[str, Any], stale: bool = False) -> None:
        """Apply one control-plane interaction (see :mod:`services.control.streams`)."""
        log.info("interaction", extra={"conversation_id": self.call.conversation_id, "kind": kind, "stale": stale})
        if kind in ("echo", "respond", "interrupt") and stale:
            return
        if kind == "echo":
            if data.get("text"):
                self.call.echo.speak(str(data["text"]))
            elif data.get("audio_b64"):
                self.call.echo.play_audio(_decode_echo_audio(data))
        elif kind == "respond":
            text = str(data.get("text") or "").strip()
            if text:
                await self.call._typed(text)
        elif kind == "interrupt":
            await self.call.interrupt("api")
        elif kind in ("overwrite_context", "append_context"):
            self.call.conv.set_context(str(data.get("context") or ""), append=kind == "append_context")
        elif kind == "set_emotion":
            emotion = EMOTIONS.get(str(data.get("emotion") or "neutral").lower(), renderer_pb2.REPLICA_EMOTION_NEUTRAL)
            try:
                intensity = float(data.get("intensity") or 1.0)
            except (TypeError, ValueError):
                intensity = 1.0
            self.call._render_send(renderer_pb2.RenderRequest(emotion=renderer_pb2.RenderSetEmotion(
                emotion=emotion, intensity=min(1.0, max(0.0, intensity)))))
        elif kind == "end":
            self.call._spawn(self.call.close(str(data.get("reason") or "ended")))


def _decode_echo_audio(data: dict[str, Any]) -> Audio:
    raw = base64.b64decode(str(data["audio_b64"]))
    rate = int(data.get("sample_rate") or 24_000)
    if data.get("encoding") == "pcm_f32le":
        samples = np.frombuffer(raw[: len(raw) // 4 * 4], "<f4").astype(np.float32)
    else:
        samples = np.frombuffer(raw[: len(raw) // 2 * 2], "<i2").astype(np.float32) / 32768.0
    return Audio(np.clip(np.nan_to_num(samples), -1, 1), rate)

