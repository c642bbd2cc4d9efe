"""The control service is stateless: stop it mid-test, start a new one on the same Redis, nothing is lost.
Replica builds cut short by a restart are resumed; conversation timeouts keep running."""

from __future__ import annotations

import asyncio
import time
import urllib.parse

import grpc
import pytest

from parley.client import AsyncParleyClient
from parley.v1 import control_pb2 as pb
from services.control import streams
from services.control.auth import verify_join_token
from tests.control.conftest import Control, Receiver, Stubs, issue_key, make_config, png_photo, wait_for


async def test_restart_keeps_everything_and_resumes_builds(redis_url, tmp_path, redis_client, monkeypatch):
    monkeypatch.setenv("PARLEY_TEST_BUILD_STEP_S", "0.1")
    config = make_config(redis_url, tmp_path)
    prefix = config.key_prefix
    first = await Control(config).start()
    port = first.app.port
    # the second instance takes the same address, as a restarted pod behind a service would
    config = config.model_copy(update={"server": config.server.model_copy(update={"port": port})})
    receiver = Receiver().start()
    key = await issue_key(config, "acme")
    sdk = AsyncParleyClient(first.address, api_key=key)
    try:
        persona = await sdk.create_persona("Guide", system_prompt="You guide tours.")
        replica = await sdk.create_replica_and_wait("Anna", png_photo(), timeout=60)
        conv = await sdk.create_conversation(persona.persona_id, replica.replica_id, callback_url=receiver.url,
                                             participant_join_timeout_s=2.5)
        cid = conv.conversation_id
        waiting = await sdk.create_conversation(persona.persona_id, participant_join_timeout_s=60)
        await sdk.respond(cid, "Hello there")
        await streams.publish_event(redis_client, cid, streams.PARTICIPANT_JOINED, {"participant_id": "u1"}, prefix)
        await streams.publish_event(redis_client, cid, streams.UTTERANCE, {"role": "user", "text": "hi"}, prefix)
        await wait_for(lambda: len(receiver.received) >= 2)
        secret_before = await sdk.webhook_secret()

        # a slow build in flight when the service stops
        monkeypatch.setenv("PARLEY_TEST_BUILD_STEP_S", "0.6")
        slow, job = await sdk.create_replica("Slow", png_photo())
        await wait_for(lambda: _job(sdk, job.job_id, lambda j: j.status == pb.JOB_STATUS_RUNNING and j.progress > 0))

        # the events stream of an SDK client, open across the restart
        seen: list[pb.ConversationEvent] = []

        async def follow():
            async for event in sdk.events(cid):
                seen.append(event)

        follower = asyncio.create_task(follow())
        await wait_for(lambda: len(seen) >= 2)

        t0 = time.perf_counter()
        await first.stop()
        second = await Control(config).start()
        restart_s = time.perf_counter() - t0
        assert second.address == first.address
        try:
            # everything is still there, through the same key
            assert (await sdk.get_persona(persona.persona_id)).system_prompt == "You guide tours."
            assert (await sdk.get_replica(replica.replica_id)).status == pb.REPLICA_STATUS_READY
            got = await sdk.get_conversation(cid)
            assert got.status == pb.CONVERSATION_STATUS_ACTIVE and got.participants == 1
            assert got.conversation_url == conv.conversation_url
            assert {c.conversation_id for c in (await sdk.list_conversations()).items} == {cid,
                                                                                          waiting.conversation_id}
            assert await sdk.webhook_secret() == secret_before
            token = urllib.parse.parse_qs(urllib.parse.urlsplit(conv.conversation_url).query)["t"][0]
            verify_join_token(token, cid, second.runtime.join_secret)  # same join secret (kept in Redis)
            log = (await sdk.list_deliveries(cid)).items
            assert len(log) >= 2 and all(d.status == pb.DELIVERY_STATUS_SUCCEEDED for d in log)

            # the interrupted build was requeued at shutdown and finishes on the new instance
            done = await sdk.wait_for_job(job.job_id, timeout=60)
            assert done.attempts == 2 and done.status == pb.JOB_STATUS_SUCCEEDED
            assert (await sdk.get_replica(slow.replica_id)).status == pb.REPLICA_STATUS_READY

            # the new instance dispatches new events and webhooks, and the SDK stream resumed
            await streams.publish_event(redis_client, cid, streams.UTTERANCE, {"role": "replica", "text": "yo"},
                                        prefix)
            await wait_for(lambda: len(seen) >= 3)
            assert [e.event_type for e in seen[:3]] == [streams.PARTICIPANT_JOINED, streams.UTTERANCE,
                                                        streams.UTTERANCE]
            assert len({e.event_id for e in seen}) == len(seen)  # no duplicates after resuming
            await sdk.end_conversation(cid)
            await asyncio.wait_for(follower, 10)
            assert seen[-1].event_type == streams.TRANSCRIPTION_READY
            await wait_for(lambda: any(json_type(r) == streams.SHUTDOWN for r in receiver.received))
        finally:
            await second.stop()
        print(f"\nrestart (stop + start) took {restart_s * 1000:.0f} ms")
    finally:
        follower_task = locals().get("follower")
        if follower_task and not follower_task.done():
            follower_task.cancel()
        await sdk.close()
        receiver.stop()
        await first.stop()


def json_type(received) -> str:
    return received.headers.get("X-Parley-Event-Type", "")


async def _job(sdk, job_id, predicate):
    job = await sdk.get_job(job_id)
    return job if predicate(job) else None


async def test_timeouts_survive_a_restart(redis_url, tmp_path):
    config = make_config(redis_url, tmp_path)
    first = await Control(config).start()
    async with grpc.aio.insecure_channel(first.address) as channel:
        stubs = Stubs(channel, await issue_key(config, "acme"))
        conv = await stubs.conversations.CreateConversation(
            pb.CreateConversationRequest(participant_join_timeout_s=1.5), metadata=stubs.md)
    await first.stop()
    await asyncio.sleep(0.5)
    second = await Control(config).start()
    try:
        async with grpc.aio.insecure_channel(second.address) as channel:
            stubs = Stubs(channel, stubs.key)

            async def ended():
                c = await stubs.conversations.GetConversation(
                    pb.GetConversationRequest(conversation_id=conv.conversation_id), metadata=stubs.md)
                return c if c.status == pb.CONVERSATION_STATUS_ENDED else None

            got = await wait_for(ended, within=10)
            assert got.end_reason == "join_timeout"
    finally:
        await second.stop()


@pytest.mark.parametrize("attempts,expected", [(1, pb.JOB_STATUS_SUCCEEDED), (2, pb.JOB_STATUS_FAILED)])
async def test_job_of_a_crashed_instance_is_recovered(control, stubs, redis_client, attempts, expected):
    """A job left 'running' by an instance that died (lease expired, no worker) is requeued or, after
    jobs.max_attempts runs, failed with the reason."""
    rt = control.runtime
    # stop this instance's own supervisor from taking the job, then fake a crashed run
    rt.jobs._stopping = True
    created = await stubs.replicas.CreateReplica(pb.CreateReplicaRequest(name="x", photo=png_photo()),
                                                 metadata=stubs.md)
    job_id = created.job.job_id
    store = rt.store
    await redis_client.lrem(store.k("jobs", "queue"), 0, job_id)
    await redis_client.hset(store.k("job", job_id), mapping={"status": "running", "attempts": str(attempts),
                                                             "progress": "0.4", "message": "fitting"})
    await redis_client.zadd(store.k("jobs", "running"), {job_id: time.time() - 1})
    rt.jobs._stopping = False
    task = asyncio.create_task(rt.jobs.run())
    try:
        assert await rt.jobs.recover() == 1
        final = await wait_for(lambda: _final(stubs, job_id), within=30)
        assert final.status == expected
        replica = await stubs.replicas.GetReplica(pb.GetReplicaRequest(replica_id=created.replica.replica_id),
                                                  metadata=stubs.md)
        if expected == pb.JOB_STATUS_FAILED:
            assert "restart" in final.error and replica.status == pb.REPLICA_STATUS_FAILED
            assert replica.error == final.error
        else:
            assert final.attempts == 2 and replica.status == pb.REPLICA_STATUS_READY
    finally:
        task.cancel()


async def _final(stubs, job_id):
    job = await stubs.replicas.GetJob(pb.GetJobRequest(job_id=job_id), metadata=stubs.md)
    return job if job.status in (pb.JOB_STATUS_SUCCEEDED, pb.JOB_STATUS_FAILED) else None
