"""End to end over real gRPC and Redis: key -> persona -> replica (job with progress) -> conversation ->
interactions on the stream -> events from a test-side session host -> end -> shutdown event -> webhooks."""

from __future__ import annotations

import asyncio
import json
import urllib.parse

import grpc
import pytest

from parley.client import verify_webhook
from parley.v1 import control_pb2 as pb
from parley.v1.common_pb2 import AudioFrame
from services.control import streams
from services.control.auth import InvalidJoinToken, verify_join_token
from tests.control.conftest import png_photo, wait_for


async def build_replica(stubs, name: str = "Anna") -> tuple[pb.Replica, list[pb.Job]]:
    created = await stubs.replicas.CreateReplica(pb.CreateReplicaRequest(name=name, photo=png_photo()),
                                                 metadata=stubs.md)
    assert created.replica.status == pb.REPLICA_STATUS_BUILDING
    assert created.job.status == pb.JOB_STATUS_QUEUED
    updates = [job async for job in stubs.replicas.WatchJob(pb.GetJobRequest(job_id=created.job.job_id),
                                                            metadata=stubs.md, timeout=120)]
    replica = await stubs.replicas.GetReplica(pb.GetReplicaRequest(replica_id=created.replica.replica_id),
                                              metadata=stubs.md)
    return replica, updates


def host_event(redis, prefix: str, conversation_id: str, kind: str, **data):
    """What the session host does: XADD an event on the conversation's events stream."""
    return streams.publish_event(redis, conversation_id, kind, data, prefix=prefix)


async def test_full_lifecycle(control, stubs, receiver, redis_client):
    prefix = control.config.key_prefix
    md = stubs.md

    persona = await stubs.personas.CreatePersona(pb.CreatePersonaRequest(persona=pb.Persona(
        name="French tutor", system_prompt="You teach French.", context="The learner is a beginner.",
        greeting="Bonjour !",
        layers=pb.PersonaLayers(
            llm=pb.LlmLayer(backend="openai", base_url="http://vllm:8000/v1", model="qwen", api_key="sk-secret",
                            sampling=pb.LlmSampling(temperature=0.3, max_tokens=64),
                            tools=[pb.LlmTool(name="lookup_word", description="dictionary",
                                              parameters_json='{"type": "object"}')]),
            tts=pb.TtsLayer(voice="af_heart", speed=1.1), asr=pb.AsrLayer(language="fr"),
            turn_taking=pb.TurnTakingLayer(patience=pb.LEVEL_HIGH, interruptibility=pb.LEVEL_LOW),
            perception=pb.PerceptionLayer(enabled=True)))), metadata=md)
    assert persona.persona_id.startswith("p_")
    assert persona.layers.llm.api_key == "****"  # write-only

    replica, updates = await build_replica(stubs)
    assert replica.status == pb.REPLICA_STATUS_READY, replica.error
    assert replica.info["gaussians"] == "1234"
    statuses = [u.status for u in updates]
    assert statuses[-1] == pb.JOB_STATUS_SUCCEEDED and updates[-1].progress == 1.0
    running = [u for u in updates if u.status == pb.JOB_STATUS_RUNNING]
    assert len({u.message for u in running}) >= 3, [u.message for u in updates]
    assert any(0 < u.progress < 1 for u in running)
    assert [u.progress for u in updates] == sorted(u.progress for u in updates)

    conv = await stubs.conversations.CreateConversation(pb.CreateConversationRequest(
        persona_id=persona.persona_id, replica_id=replica.replica_id, name="lesson 1", callback_url=receiver.url,
        max_duration_s=600, custom_greeting="Salut !", conversational_context="Topic: food."), metadata=md)
    cid = conv.conversation_id
    assert conv.status == pb.CONVERSATION_STATUS_WAITING
    assert conv.participant_join_timeout_s == control.config.defaults.participant_join_timeout_s
    url = urllib.parse.urlsplit(conv.conversation_url)
    assert url.path == f"/c/{cid}"
    token = urllib.parse.parse_qs(url.query)["t"][0]
    secret = control.runtime.join_secret
    assert verify_join_token(token, cid, secret).conversation_id == cid

    # what the session host reads: the resolved spec, and the session-store record for the stage services
    record = await redis_client.hgetall(streams.conversation_key(cid, prefix))
    spec = json.loads(record["spec"])
    assert spec["greeting"] == "Salut !" and spec["layers"]["llm"]["api_key"] == "sk-secret"
    assert spec["context"] == "The learner is a beginner.\n\nTopic: food."
    assert await redis_client.exists(f"{prefix}session:{cid}")

    # events stream, opened before the host publishes anything
    seen: list[pb.ConversationEvent] = []

    async def follow():
        async for event in stubs.conversations.StreamEvents(
                pb.StreamEventsRequest(conversation_id=cid, follow=True), metadata=md):
            seen.append(event)

    follower = asyncio.create_task(follow())

    # interactions: validated, then XADDed for the session host
    interactions = [
        pb.InteractRequest(conversation_id=cid, echo=pb.Echo(text="Say exactly this.")),
        pb.InteractRequest(conversation_id=cid, echo=pb.Echo(audio=AudioFrame(data=b"\x01\x00" * 160,
                                                                              sample_rate=16000))),
        pb.InteractRequest(conversation_id=cid, respond=pb.Respond(text="What is bread in French?")),
        pb.InteractRequest(conversation_id=cid, interrupt=pb.Interrupt()),
        pb.InteractRequest(conversation_id=cid, overwrite_context=pb.OverwriteContext(context="Topic: travel.")),
        pb.InteractRequest(conversation_id=cid, append_context=pb.AppendContext(context="Be brief.")),
        pb.InteractRequest(conversation_id=cid, set_emotion=pb.SetEmotion(emotion="happy", intensity=0.6)),
    ]
    ids = [(await stubs.conversations.Interact(r, metadata=md)).interaction_id for r in interactions]
    entries = await redis_client.xrange(streams.interactions_key(cid, prefix))
    assert [e[0] for e in entries] == ids
    decoded = [streams.decode_entry(f)[:2] for _, f in entries]
    assert [k for k, _ in decoded] == ["echo", "echo", "respond", "interrupt", "overwrite_context",
                                       "append_context", "set_emotion"]
    assert decoded[0][1] == {"text": "Say exactly this."}
    assert decoded[1][1]["sample_rate"] == 16000 and decoded[1][1]["encoding"] == "pcm_s16le"
    assert decoded[6][1] == {"emotion": "joy", "intensity": pytest.approx(0.6)}
    got = await stubs.conversations.GetConversation(pb.GetConversationRequest(conversation_id=cid), metadata=md)
    assert got.conversational_context == "Topic: travel.\n\nBe brief."

    # the session host joins and talks
    await host_event(redis_client, prefix, cid, streams.REPLICA_JOINED)
    await host_event(redis_client, prefix, cid, streams.PARTICIPANT_JOINED, participant_id="u1")
    await host_event(redis_client, prefix, cid, streams.USER_STARTED)
    await host_event(redis_client, prefix, cid, streams.USER_STOPPED)
    await host_event(redis_client, prefix, cid, streams.UTTERANCE, role="user", text="Bonjour", start_time=1.0,
                     end_time=1.6)
    await host_event(redis_client, prefix, cid, streams.REPLICA_STARTED)
    await host_event(redis_client, prefix, cid, streams.UTTERANCE, role="replica", text="Bonjour ! Ça va ?",
                     start_time=2.0, end_time=3.1)
    await host_event(redis_client, prefix, cid, streams.REPLICA_STOPPED)
    await host_event(redis_client, prefix, cid, streams.TOOL_CALL, call_id="t1", name="lookup_word",
                     arguments_json='{"word": "pain"}')

    active = await wait_for(lambda: _status(stubs, cid, pb.CONVERSATION_STATUS_ACTIVE))
    assert active.participants == 1 and active.joined_at > 0
    await wait_for(lambda: len(seen) >= 9)

    ended = await stubs.conversations.EndConversation(pb.EndConversationRequest(conversation_id=cid), metadata=md)
    assert ended.status == pb.CONVERSATION_STATUS_ENDED and ended.end_reason == "ended_by_api"
    again = await stubs.conversations.EndConversation(pb.EndConversationRequest(conversation_id=cid), metadata=md)
    assert again.ended_at == ended.ended_at  # idempotent
    await asyncio.wait_for(follower, 10)  # the stream ends by itself after the end

    types = [e.event_type for e in seen]
    assert types == [streams.REPLICA_JOINED, streams.PARTICIPANT_JOINED, streams.USER_STARTED, streams.USER_STOPPED,
                     streams.UTTERANCE, streams.REPLICA_STARTED, streams.UTTERANCE, streams.REPLICA_STOPPED,
                     streams.TOOL_CALL, streams.SHUTDOWN, streams.TRANSCRIPTION_READY]
    assert seen[4].utterance.text == "Bonjour" and seen[4].utterance.role == "user"
    assert seen[8].tool_call.name == "lookup_word" and json.loads(seen[8].tool_call.arguments_json) == {"word": "pain"}
    assert seen[9].system.reason == "ended_by_api"
    assert [u.text for u in seen[10].transcription.transcript] == ["Bonjour", "Bonjour ! Ça va ?"]

    # resumable: from the 5th event on
    rest = [e async for e in stubs.conversations.StreamEvents(
        pb.StreamEventsRequest(conversation_id=cid, after_event_id=seen[4].event_id), metadata=md)]
    assert [e.event_id for e in rest] == [e.event_id for e in seen[5:]]

    # the host is told to stop; Interact on an ended conversation is refused
    last = (await redis_client.xrevrange(streams.interactions_key(cid, prefix), count=1))[0]
    assert streams.decode_entry(last[1])[:2] == ("end", {"reason": "ended_by_api"})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.conversations.Interact(pb.InteractRequest(conversation_id=cid, interrupt=pb.Interrupt()),
                                           metadata=md)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # webhooks: every event delivered, signed with the tenant's secret
    webhook_secret = (await stubs.webhooks.GetWebhookSecret(pb.GetWebhookSecretRequest(), metadata=md)).secret
    await wait_for(lambda: len(receiver.received) >= 11)
    bodies = [verify_webhook(webhook_secret, r.body, r.headers["X-Parley-Signature"]) for r in receiver.received]
    assert {b["event_type"] for b in bodies} >= {streams.SHUTDOWN, streams.TRANSCRIPTION_READY, streams.UTTERANCE}
    shutdown = next(b for b in bodies if b["event_type"] == streams.SHUTDOWN)
    assert shutdown["conversation_id"] == cid and shutdown["properties"] == {"reason": "ended_by_api"}
    tampered = receiver.received[0]
    with pytest.raises(ValueError):
        verify_webhook(webhook_secret, tampered.body + b" ", tampered.headers["X-Parley-Signature"])
    log = await wait_for(lambda: _all_delivered(stubs, cid, 11))
    assert all(len(d.attempts) == 1 and d.attempts[0].status_code == 204 for d in log)

    # the conversation's join token is bound to it and expires
    with pytest.raises(InvalidJoinToken, match="another conversation"):
        verify_join_token(token, "c_" + "0" * 20, secret)
    with pytest.raises(InvalidJoinToken, match="expired"):
        verify_join_token(token, cid, secret, now=conv.join_token_expires_at + 1)


async def _status(stubs, cid: str, status: int) -> pb.Conversation | None:
    conv = await stubs.conversations.GetConversation(pb.GetConversationRequest(conversation_id=cid),
                                                     metadata=stubs.md)
    return conv if conv.status == status else None


async def _all_delivered(stubs, cid: str, n: int) -> list[pb.Delivery] | None:
    reply = await stubs.webhooks.ListDeliveries(pb.ListDeliveriesRequest(conversation_id=cid), metadata=stubs.md)
    done = [d for d in reply.deliveries if d.status == pb.DELIVERY_STATUS_SUCCEEDED]
    return list(reply.deliveries) if len(done) >= n and len(done) == len(reply.deliveries) else None
