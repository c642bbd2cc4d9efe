"""Redis-backed session state: conversation state, transcript and turn history, with expiry.

Keys (``prefix`` defaults to ``parley:``):

* ``{prefix}session:{id}``            hash: state fields (status, persona, created_at, ...)
* ``{prefix}session:{id}:transcript``  list of JSON utterances ``{role, text, ts, ...}``
* ``{prefix}session:{id}:turns``       list of JSON turn records (latency breakdown, outcome)

Every write refreshes the expiry of all three keys, so an idle session disappears after ``ttl_s``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from parley.errors import InvalidInput, NotFound

_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def validate_session_id(session_id: str) -> str:
    """Return ``session_id`` if well-formed, else raise InvalidInput."""
    if not session_id:
        raise InvalidInput("session_id is required")
    if not _SESSION_ID.match(session_id):
        raise InvalidInput(
            "session_id must be 1-128 characters of letters, digits, '_', '-', '.' starting with a letter or digit"
        )
    return session_id


class SessionStore:
    """Async access to session state in Redis."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", ttl_s: int = 3600, prefix: str = "parley:") -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.redis = aioredis.from_url(url, decode_responses=True)

    def _key(self, session_id: str, part: str = "") -> str:
        return f"{self.prefix}session:{session_id}{':' + part if part else ''}"

    def _keys(self, session_id: str) -> list[str]:
        return [self._key(session_id), self._key(session_id, "transcript"), self._key(session_id, "turns")]

    async def ping(self) -> bool:
        """True when Redis answers."""
        return bool(await self.redis.ping())

    async def create(self, session_id: str | None = None, **state: Any) -> str:
        """Create a session (random id unless given) with initial state fields; returns its id."""
        session_id = validate_session_id(session_id or uuid.uuid4().hex)
        fields = {k: _enc(v) for k, v in {"status": "active", "created_at": time.time(), **state}.items()}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(session_id), mapping=fields)
            pipe.expire(self._key(session_id), self.ttl_s)
            await pipe.execute()
        return session_id

    async def exists(self, session_id: str) -> bool:
        """True when the session is known (and not expired)."""
        validate_session_id(session_id)
        return bool(await self.redis.exists(self._key(session_id)))

    async def require(self, session_id: str) -> None:
        """Raise InvalidInput for a malformed id, NotFound for an unknown one."""
        if not await self.exists(session_id):
            raise NotFound(f"unknown session_id {session_id!r}")

    async def get(self, session_id: str) -> dict[str, Any]:
        """State fields of the session (NotFound if it does not exist)."""
        validate_session_id(session_id)
        raw = await self.redis.hgetall(self._key(session_id))
        if not raw:
            raise NotFound(f"unknown session_id {session_id!r}")
        return {k: _dec(v) for k, v in raw.items()}

    async def update(self, session_id: str, **state: Any) -> None:
        """Set state fields on an existing session and refresh its expiry."""
        await self.require(session_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(session_id), mapping={k: _enc(v) for k, v in state.items()})
            self._expire_all(pipe, session_id)
            await pipe.execute()

    async def append_utterance(self, session_id: str, role: str, text: str, **extra: Any) -> None:
        """Append one utterance to the transcript."""
        await self._push(session_id, "transcript", {"role": role, "text": text, "ts": time.time(), **extra})

    async def transcript(self, session_id: str) -> list[dict[str, Any]]:
        """All utterances, oldest first."""
        return await self._list(session_id, "transcript")

    async def append_turn(self, session_id: str, record: dict[str, Any]) -> None:
        """Append one turn record (latency breakdown, outcome) to the turn history."""
        await self._push(session_id, "turns", {"ts": time.time(), **record})

    async def turns(self, session_id: str) -> list[dict[str, Any]]:
        """All turn records, oldest first."""
        return await self._list(session_id, "turns")

    async def delete(self, session_id: str) -> None:
        """Remove the session and its lists."""
        validate_session_id(session_id)
        await self.redis.delete(*self._keys(session_id))

    async def ttl(self, session_id: str) -> int:
        """Seconds until the session expires (-2 when it does not exist)."""
        return int(await self.redis.ttl(self._key(session_id)))

    async def close(self) -> None:
        await self.redis.aclose()

    def _expire_all(self, pipe: Any, session_id: str) -> None:
        for key in self._keys(session_id):
            pipe.expire(key, self.ttl_s)

    async def _push(self, session_id: str, part: str, item: dict[str, Any]) -> None:
        await self.require(session_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(self._key(session_id, part), json.dumps(item, default=str))
            self._expire_all(pipe, session_id)
            await pipe.execute()

    async def _list(self, session_id: str, part: str) -> list[dict[str, Any]]:
        await self.require(session_id)
        return [json.loads(x) for x in await self.redis.lrange(self._key(session_id, part), 0, -1)]


def _enc(value: Any) -> str:
    return json.dumps(value, default=str)


def _dec(value: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, TypeError):
        return value
