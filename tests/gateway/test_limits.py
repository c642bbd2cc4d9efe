"""Signalling refusals: malformed SDP, missing / invalid / expired / foreign tokens, an ended conversation, a
conversation already in a call, too many calls -- each a 4xx with a JSON message, while a live call goes on."""

from __future__ import annotations

import time

import httpx
import pytest
import redis.asyncio as aioredis

from services.control.auth import join_secret, sign_join_token
from tests.gateway.conftest import RtcClient, token_of

pytestmark = pytest.mark.e2e


async def expired_token(redis_url: str, conversation_id: str) -> str:
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        return sign_join_token(await join_secret(client), conversation_id, time.time() - 5)
    finally:
        await client.aclose()


async def test_refusals_are_clear_and_leave_other_calls_alone(parley, control):
    live_conv = await control.create(name="live call")
    live = RtcClient(parley.gateway_url, live_conv.conversation_id, token_of(live_conv.conversation_url))
    others: list[RtcClient] = []
    try:
        assert (await live.join()).status_code == 200
        await live.wait(lambda c: c.video_frames > 10 and any(m["type"] == "hello" for m in c.messages))

        target = await control.create(name="target")
        url = f"{parley.gateway_url}/api/conversations/{target.conversation_id}/offer"
        token = token_of(target.conversation_url)
        probe = RtcClient(parley.gateway_url, target.conversation_id, token)
        good_sdp = await probe.offer_sdp()
        await probe.close()
        offer = {"type": "offer", "sdp": good_sdp}
        cases = [
            ({**offer, "sdp": "v=0\r\nthis is not a session description", "token": token}, 400, "bad_sdp"),
            ({**offer, "sdp": "hello", "token": token}, 400, "bad_sdp"),
            ({**offer, "sdp": good_sdp.replace("a=ice-pwd", "a=x-ice-pwd"), "token": token}, 400, "bad_sdp"),
            ({"type": "answer", "sdp": good_sdp, "token": token}, 400, "bad_request"),
            (offer, 401, "missing_token"),
            ({**offer, "token": "not.a-token"}, 401, "invalid_token"),
            ({**offer, "token": token[:-3] + "AAA"}, 401, "invalid_token"),
            ({**offer, "token": await expired_token(parley.redis_url, target.conversation_id)}, 401,
             "token_expired"),
            ({**offer, "token": token_of(live_conv.conversation_url)}, 403, "foreign_token"),
        ]
        async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
            for body, status, code in cases:
                response = await http.post(url, json=body)
                assert response.status_code == status, (code, response.text)
                assert response.json()["error"] == code and response.json()["message"], response.text
            response = await http.post(url, content=b"{not json", headers={"Content-Type": "application/json"})
            assert response.status_code == 400 and response.json()["error"] == "bad_request"
            response = await http.post(url, content=b"x" * (300 * 1024))
            assert response.status_code == 413 and response.json()["error"] == "too_large"
            # the live conversation cannot be joined a second time without its resume id
            response = await http.post(
                f"{parley.gateway_url}/api/conversations/{live_conv.conversation_id}/offer",
                json={**offer, "token": token_of(live_conv.conversation_url)})
            assert response.status_code == 409 and response.json()["error"] == "in_call", response.text
            # an ended conversation
            ended = await control.create(name="ended")
            await control.end(ended.conversation_id)
            response = await http.post(f"{parley.gateway_url}/api/conversations/{ended.conversation_id}/offer",
                                       json={**offer, "token": token_of(ended.conversation_url)})
            assert response.status_code == 410 and response.json()["error"] == "conversation_ended"

        # capacity: the gateway under test takes 2 calls
        second = RtcClient(parley.gateway_url, target.conversation_id, token)
        others.append(second)
        assert (await second.join()).status_code == 200
        third_conv = await control.create(name="one too many")
        third = RtcClient(parley.gateway_url, third_conv.conversation_id, token_of(third_conv.conversation_url))
        others.append(third)
        response = await third.join()
        assert response.status_code == 429 and response.json()["error"] == "too_many_sessions", response.text

        # the live call never noticed
        frames = live.video_frames
        live.send({"type": "ping", "t": 1})
        await live.wait(lambda c: any(m["type"] == "pong" for m in c.messages) and c.video_frames > frames + 15)
        assert not [m for m in live.messages if m["type"] in ("error", "ended")], live.messages

        # hanging up frees the slot
        async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
            response = await http.post(f"{parley.gateway_url}/api/conversations/{target.conversation_id}/leave",
                                       json={"token": token, "resume_id": second.resume_id})
            assert response.status_code == 200, response.text
        third = RtcClient(parley.gateway_url, third_conv.conversation_id, token_of(third_conv.conversation_url))
        others.append(third)
        assert (await third.join()).status_code == 200
        await third.wait(lambda c: c.video_frames > 5)
    finally:
        for client in (live, *others):
            await client.close()
