import asyncio

import pytest

from parley.errors import InvalidInput, NotFound
from parley.session_store import SessionStore


async def test_create_get_update(store):
    sid = await store.create(persona="p1", max_turns=3)
    assert await store.exists(sid)
    state = await store.get(sid)
    assert state["status"] == "active" and state["persona"] == "p1" and state["max_turns"] == 3
    await store.update(sid, status="ended")
    assert (await store.get(sid))["status"] == "ended"


async def test_transcript_and_turns_in_order(store, session_id):
    await store.append_utterance(session_id, "user", "hello")
    await store.append_utterance(session_id, "replica", "hi there", turn_id=1)
    await store.append_turn(session_id, {"turn_id": 1, "latency": {"total_ms": 900.0}})
    transcript = await store.transcript(session_id)
    assert [(u["role"], u["text"]) for u in transcript] == [("user", "hello"), ("replica", "hi there")]
    assert (await store.turns(session_id))[0]["latency"]["total_ms"] == 900.0


async def test_unknown_and_malformed_ids(store):
    with pytest.raises(NotFound):
        await store.get("nope")
    with pytest.raises(NotFound):
        await store.append_utterance("nope", "user", "x")
    with pytest.raises(InvalidInput):
        await store.exists("bad id with spaces")
    with pytest.raises(InvalidInput):
        await store.create("-starts-with-dash")
    assert await store.exists(await store.create(""))  # empty means "generate one"

async def test_expiry_applies_to_every_key(redis_url):
    store = SessionStore(redis_url, ttl_s=1)
    try:
        sid = await store.create()
        await store.append_utterance(sid, "user", "hello")
        assert 0 < await store.ttl(sid) <= 1
        await asyncio.sleep(2.1)
        assert not await store.exists(sid)
        assert await store.redis.exists(f"parley:session:{sid}:transcript") == 0
    finally:
        await store.close()


async def test_delete(store, session_id):
    await store.append_utterance(session_id, "user", "x")
    await store.delete(session_id)
    assert not await store.exists(session_id)
