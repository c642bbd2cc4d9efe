"""Who may join a conversation: the join token of its ``conversation_url``.

The gateway asks a :class:`TokenVerifier`; the default one checks the control plane's signed join tokens
(:func:`services.control.auth.verify_join_token`) with the secret the control plane keeps in Redis, then
reads the conversation record to refuse ended conversations and to learn its spec (persona prompt,
context, greeting, replica).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("parley.gateway.auth")


class JoinRefused(Exception):
    """A join attempt the gateway refuses: HTTP ``status`` with a machine code and a human message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class JoinInfo:
    """What a verified join gives the session worker."""

    conversation_id: str
    expires_at: float = 0.0
    system_prompt: str = ""
    context: str = ""
    greeting: str = ""
    replica_id: str = ""
    persona_id: str = ""
    spec: dict[str, Any] = field(default_factory=dict)


class TokenVerifier(Protocol):
    """Checks a join token for a conversation; raises :class:`JoinRefused`, returns :class:`JoinInfo`."""

    async def verify(self, token: str, conversation_id: str) -> JoinInfo: ...


class ControlTokenVerifier:
    """Join tokens signed by the control plane, checked against its conversation records in Redis."""

    def __init__(self, redis: Any, prefix: str = "parley:", secret: str = "") -> None:
        self.redis = redis
        self.prefix = prefix
        self._secret = secret

    async def _join_secret(self) -> str:
        if not self._secret:
            from services.control.auth import join_secret

            self._secret = await join_secret(self.redis, self.prefix, "")
        return self._secret

    async def verify(self, token: str, conversation_id: str) -> JoinInfo:
        from services.control.auth import InvalidJoinToken, verify_join_token
        from services.control.streams import conversation_key

        if not token:
            raise JoinRefused(401, "missing_token", "this link has no join token: open the conversation URL you "
                                                    "were given")
        try:
            claims = verify_join_token(token, conversation_id, await self._join_secret())
        except InvalidJoinToken as exc:
            text = str(exc)
            if "expired" in text:
                raise JoinRefused(401, "token_expired", "this conversation link has expired") from None
            if "another conversation" in text:
                raise JoinRefused(403, "foreign_token", "this join token belongs to another conversation") from None
            raise JoinRefused(401, "invalid_token", f"invalid join token: {text}") from None
        record = await self.redis.hgetall(conversation_key(conversation_id, self.prefix))
        record = {_s(k): _s(v) for k, v in (record or {}).items()}
        if not record:
            raise JoinRefused(404, "unknown_conversation", f"conversation {conversation_id} does not exist")
        if record.get("status") == "ended":
            reason = record.get("end_reason") or "ended"
            raise JoinRefused(410, "conversation_ended", f"this conversation has ended ({reason})")
        try:
            spec = json.loads(record.get("spec") or "{}")
        except ValueError:
            spec = {}
        if not isinstance(spec, dict):
            spec = {}
        return JoinInfo(
            conversation_id=conversation_id, expires_at=claims.expires_at,
            system_prompt=str(spec.get("system_prompt") or ""), context=str(spec.get("context") or ""),
            greeting=str(spec.get("greeting") or ""),
            replica_id=str(spec.get("replica_id") or record.get("replica_id") or ""),
            persona_id=str(spec.get("persona_id") or record.get("persona_id") or ""), spec=spec,
        )


def _s(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
