"""Webhook retries and the delivery log; conversations ending by themselves (reaper, host shutdown)."""

from __future__ import annotations

import pytest

from parley.client import verify_webhook
from parley.v1 import control_pb2 as pb
from services.control import streams
from tests.control.conftest import Control, Receiver, issue_key, make_config, wait_for


async def _deliveries(stubs, cid: str) -> list[pb.Delivery]:
    reply = await stubs.webhooks.ListDeliveries(pb.ListDeliveriesRequest(conversation_id=cid), metadata=stubs.md)
    return list(reply.deliveries)


async def test_webhook_retried_with_backoff_until_delivered(control, stubs):
    receiver = Receiver(fail_first=2).start()
    try:
        conv = await stubs.conversations.CreateConversation(
            pb.CreateConversationRequest(callback_url=receiver.url), metadata=stubs.md)
        cid = conv.conversation_id
        await stubs.conversations.EndConversation(pb.EndConversationRequest(conversation_id=cid), metadata=stubs.md)

        async def shutdown_delivered():
            log = await _deliveries(stubs, cid)
            shut = [d for d in log if d.event_type == streams.SHUTDOWN]
            return shut[0] if shut and shut[0].status == pb.DELIVERY_STATUS_SUCCEEDED else None

        delivery = await wait_for(shutdown_delivered, within=15)
        assert [a.status_code for a in delivery.attempts] == [500, 500, 204]
        assert [a.error for a in delivery.attempts] == ["HTTP 500", "HTTP 500", ""]
        gaps = [b.at - a.at for a, b in zip(delivery.attempts, delivery.attempts[1:], strict=False)]
        assert gaps[0] >= 0.15 and gaps[1] >= 1.5 * gaps[0] * 0.8  # 0.2 s, then 0.4 s (+-10 % jitter)
        secret = (await stubs.webhooks.GetWebhookSecret(pb.GetWebhookSecretRequest(), metadata=stubs.md)).secret
        hit = next(r for r in receiver.received if r.headers["X-Parley-Event-Type"] == streams.SHUTDOWN)
        assert hit.headers["X-Parley-Delivery-Attempt"] == "3"
        assert verify_webhook(secret, hit.body, hit.headers["X-Parley-Signature"])["event_id"] == delivery.event_id
    finally:
        receiver.stop()


async def test_webhook_gives_up_after_max_attempts(redis_url, tmp_path):
    ctl = await Control(make_config(redis_url, tmp_path, webhooks={"max_attempts": 3, "backoff_initial_s": 0.1})
                        ).start()
    receiver = Receiver(fail_first=100).start()
    try:
        import grpc

        from tests.control.conftest import Stubs

        async with grpc.aio.insecure_channel(ctl.address) as channel:
            stubs = Stubs(channel, await issue_key(ctl.config, "acme"))
            conv = await stubs.conversations.CreateConversation(
                pb.CreateConversationRequest(callback_url=receiver.url), metadata=stubs.md)
            await stubs.conversations.EndConversation(
                pb.EndConversationRequest(conversation_id=conv.conversation_id), metadata=stubs.md)

            async def all_failed():
                log = await _deliveries(stubs, conv.conversation_id)
                return log if log and all(d.status == pb.DELIVERY_STATUS_FAILED for d in log) else None

            log = await wait_for(all_failed, within=15)
            assert {len(d.attempts) for d in log} == {3}
            assert not receiver.received
    finally:
        receiver.stop()
        await ctl.stop()


@pytest.mark.parametrize("case", ["join_timeout", "participant_absent", "max_duration", "host_shutdown"])
async def test_conversations_end_by_themselves(control, stubs, redis_client, case):
    prefix = control.config.key_prefix
    request = pb.CreateConversationRequest(participant_join_timeout_s=0.6 if case == "join_timeout" else 60,
                                           participant_absent_timeout_s=0.6, max_duration_s=60)
    if case == "max_duration":
        request.max_duration_s = 1.0
    conv = await stubs.conversations.CreateConversation(request, metadata=stubs.md)
    cid = conv.conversation_id
    if case != "join_timeout":
        await streams.publish_event(redis_client, cid, streams.PARTICIPANT_JOINED, {"participant_id": "u1"}, prefix)
    if case == "participant_absent":
        await wait_for(lambda: _get(stubs, cid, lambda c: c.participants == 1))
        await streams.publish_event(redis_client, cid, streams.PARTICIPANT_LEFT, {"participant_id": "u1"}, prefix)
    if case == "host_shutdown":
        await streams.publish_event(redis_client, cid, streams.SHUTDOWN, {"reason": "participant_hung_up"}, prefix)
    expected = {"host_shutdown": "participant_hung_up"}.get(case, case)
    ended = await wait_for(lambda: _get(stubs, cid, lambda c: c.status == pb.CONVERSATION_STATUS_ENDED), within=10)
    assert ended.end_reason == expected
    if case == "max_duration":
        assert ended.ended_at - ended.joined_at == pytest.approx(1.0, abs=0.6)
    events = [e async for e in stubs.conversations.StreamEvents(
        pb.StreamEventsRequest(conversation_id=cid), metadata=stubs.md)]
    shutdowns = [e for e in events if e.event_type == streams.SHUTDOWN]
    assert len(shutdowns) == 1 and shutdowns[0].system.reason == expected
    assert events[-1].event_type == streams.TRANSCRIPTION_READY
    last = (await redis_client.xrevrange(streams.interactions_key(cid, prefix), count=1))[0]
    assert streams.decode_entry(last[1])[:2] == ("end", {"reason": expected})
    listed = await stubs.conversations.ListConversations(
        pb.ListConversationsRequest(status=pb.CONVERSATION_STATUS_ENDED), metadata=stubs.md)
    assert cid in [c.conversation_id for c in listed.conversations]


async def _get(stubs, cid, predicate):
    conv = await stubs.conversations.GetConversation(pb.GetConversationRequest(conversation_id=cid),
                                                     metadata=stubs.md)
    return conv if predicate(conv) else None
