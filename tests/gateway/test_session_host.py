"""The gateway's session worker is the conversation's session host: the control plane's interactions (echo,
respond, interrupt, emotion, context, end) reach the live call, and the call's events reach the control
plane's events stream. Driven with the Python WebRTC client (no browser)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from parley.audio import encode_frame
from parley.v1 import control_pb2 as pb
from tests.gateway.conftest import RtcClient, token_of

pytestmark = pytest.mark.e2e

LONG = ("This is a long announcement that goes on for quite a while, so that there is plenty of time to stop it "
        "in the middle, long before it reaches its natural end, which it never will.")


def mouth_corner_lift(rgb: np.ndarray) -> float:
    """Mouth corners above the lip centre, in eye-distance units (MediaPipe face mesh on a received frame)."""
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True) as mesh:
        found = mesh.process(rgb).multi_face_landmarks
    assert found, "no face in the received video frame"
    h, w = rgb.shape[:2]
    lm = found[0].landmark

    def p(i: int) -> np.ndarray:
        return np.array([lm[i].x * w, lm[i].y * h])

    centre, corners = (p(13) + p(14)) / 2, (p(61) + p(291)) / 2
    return float((centre[1] - corners[1]) / np.linalg.norm(p(33) - p(263)))


async def sample_lift(client: RtcClient, frames: int = 5) -> float:
    """Median corner lift over a few frames received 0.15 s apart."""
    lifts = []
    for _ in range(frames):
        lifts.append(mouth_corner_lift(client.last_video.to_ndarray(format="rgb24")))
        await asyncio.sleep(0.15)
    return float(np.median(lifts))


def stopped(client: RtcClient, prefix: str) -> list[dict]:
    return [m for m in client.messages
            if m["type"] == "replica.stopped_speaking" and m["utterance_id"].startswith(prefix)]


async def test_interactions_drive_the_call_and_events_flow_back(parley, control):
    conv = await control.create(name="session host", custom_greeting="Hello there, nice to meet you.")
    cid = conv.conversation_id
    client = RtcClient(parley.gateway_url, cid, token_of(conv.conversation_url))
    try:
        assert (await client.join()).status_code == 200
        # the greeting is spoken as soon as the participant is connected
        await client.wait(lambda c: stopped(c, "greeting"), 60)
        assert "nice to meet you" in stopped(client, "greeting")[0]["text"].lower()
        assert client.audio_frames > 50 and client.video_frames > 30

        # echo: the replica says exactly this, no LLM
        await control.interact(cid, echo=pb.Echo(text="The quick brown fox jumps over the lazy dog."))
        await client.wait(lambda c: stopped(c, "echo"), 60)
        assert "fox" in stopped(client, "echo")[0]["text"]
        # echo with recorded audio
        tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(8000) / 16000).astype(np.float32)
        await control.interact(cid, echo=pb.Echo(audio=encode_frame(tone, 16000)))
        await client.wait(lambda c: stopped(c, "audio"), 30)

        # set emotion: the rendered face the participant receives changes (measured by an independent model)
        neutral = await sample_lift(client)
        await control.interact(cid, set_emotion=pb.SetEmotion(emotion="joy", intensity=1.0))
        await asyncio.sleep(1.5)  # emotions ease in over ~0.35 s
        joyful = await sample_lift(client)
        assert joyful > neutral + 0.02, (neutral, joyful)

        # context changes are applied without disturbing the call
        await control.interact(cid, overwrite_context=pb.OverwriteContext(context="The secret word is pineapple."))
        await control.interact(cid, append_context=pb.AppendContext(context="Mention it when asked."))
        # respond: as if the user had said it
        await control.interact(cid, respond=pb.Respond(text="What is the secret word?"))
        await client.wait(lambda c: any(m["type"] == "reply.done" for m in c.messages), 90)
        done = next(m for m in client.messages if m["type"] == "reply.done")
        assert done["user_text"] == "What is the secret word?" and done["text"].strip()
        await client.wait(lambda c: stopped(c, "turn"), 90)

        # interrupt: a long echo stops in the middle
        first_echo = stopped(client, "echo")[0]["utterance_id"]
        await control.interact(cid, echo=pb.Echo(text=LONG))

        def long_started(c: RtcClient) -> str | None:
            return next((m["utterance_id"] for m in c.messages if m["type"] == "replica.started_speaking"
                         and m["utterance_id"].startswith("echo") and m["utterance_id"] != first_echo), None)

        await client.wait(long_started, 60)
        long_id = long_started(client)
        await asyncio.sleep(1.0)
        await control.interact(cid, interrupt=pb.Interrupt())
        await client.wait(lambda c: [m for m in stopped(c, long_id) if m["interrupted"]], 10)
        cut = stopped(client, long_id)[0]
        assert 0 < cut["played_us"] < 8_000_000 and cut["text"] and len(cut["text"]) < len(LONG), cut
        assert not [m for m in client.messages if m["type"] == "error"], client.messages

        # the control plane ends the conversation: the call is told and closed
        await control.end(cid)
        await client.wait(lambda c: any(m["type"] == "ended" for m in c.messages), 15)
    finally:
        await client.close()

    for _ in range(50):  # the gateway publishes participant_left once the call is torn down
        events = await control.events(cid)
        kinds = [k for k, _ in events]
        if "system.participant_left" in kinds:
            break
        await asyncio.sleep(0.1)
    for kind in ("system.replica_joined", "system.participant_joined", "conversation.replica.started_speaking",
                 "conversation.replica.stopped_speaking", "conversation.utterance", "system.participant_left"):
        assert kind in kinds, (kind, kinds)
    said = [d["text"] for k, d in events if k == "conversation.utterance" and d["role"] == "replica"]
    assert any("nice to meet you" in t.lower() for t in said) and any("fox" in t for t in said), said
    users = [d["text"] for k, d in events if k == "conversation.utterance" and d["role"] == "user"]
    assert "What is the secret word?" in users, users
