"""API keys, tenants, the authenticating interceptor, and signed join tokens.

API keys look like ``pk_<key id: 12 hex>_<secret: 43 base64url chars>``. Redis keeps only
``sha256(key)`` under ``{prefix}control:apikey:{key id}`` (hash: tenant, sha256, name, created_at,
revoked); the key itself is shown once, when created.

Join tokens (``conversation_url``'s ``t`` parameter) are ``<payload>.<signature>``, both base64url:
payload ``{"c": conversation_id, "exp": unix seconds, "v": 1}``, signature
``HMAC-SHA256(join secret, payload)``. :func:`verify_join_token` is what the gateway calls.
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from parley.errors import InvalidInput, ParleyError

TENANT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
KEY_RE = re.compile(r"pk_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})")

_tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar("parley_control_tenant", default=None)


class Unauthenticated(ParleyError):
    """No API key, an unknown or revoked one, or a bad join token: UNAUTHENTICATED."""

    code = grpc.StatusCode.UNAUTHENTICATED


class InvalidJoinToken(Unauthenticated):
    """A join token that is malformed, forged, expired, or for another conversation."""


def current_tenant() -> str:
    """The tenant of the API key of the call being served (set by the auth gate)."""
    tenant = _tenant.get()
    if tenant is None:
        raise Unauthenticated("no authenticated tenant for this call")
    return tenant


def validate_tenant(tenant: str) -> str:
    if not TENANT_RE.fullmatch(tenant or ""):
        raise InvalidInput("tenant must be 1-63 characters of a-z, 0-9, '_', '-' starting with a letter or digit")
    return tenant


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# -- API keys in Redis ---------------------------------------------------------------------------------
@dataclass
class IssuedKey:
    key: str
    key_id: str
    tenant: str
    webhook_secret: str


class KeyStore:
    """API keys and tenant records (works with an asyncio Redis client)."""

    def __init__(self, redis: Any, prefix: str = "parley:") -> None:
        self.redis = redis
        self.prefix = prefix

    def key_key(self, key_id: str) -> str:
        return f"{self.prefix}control:apikey:{key_id}"

    def tenant_key(self, tenant: str) -> str:
        return f"{self.prefix}control:tenant:{tenant}"

    async def ensure_tenant(self, tenant: str) -> str:
        """Create the tenant record if new; returns its webhook secret."""
        key = self.tenant_key(validate_tenant(tenant))
        await self.redis.hsetnx(key, "webhook_secret", "whsec_" + secrets.token_urlsafe(32))
        await self.redis.hsetnx(key, "created_at", repr(time.time()))
        return await self.redis.hget(key, "webhook_secret")

    async def webhook_secret(self, tenant: str) -> str:
        secret = await self.redis.hget(self.tenant_key(tenant), "webhook_secret")
        return secret or await self.ensure_tenant(tenant)

    async def rotate_webhook_secret(self, tenant: str) -> str:
        secret = "whsec_" + secrets.token_urlsafe(32)
        await self.redis.hset(self.tenant_key(tenant), "webhook_secret", secret)
        return secret

    async def create(self, tenant: str, name: str = "") -> IssuedKey:
        """Issue a key for ``tenant`` (creating the tenant); the key is returned once, stored hashed."""
        webhook_secret = await self.ensure_tenant(tenant)
        key_id = secrets.token_hex(6)
        key = f"pk_{key_id}_{secrets.token_urlsafe(32)}"
        await self.redis.hset(self.key_key(key_id), mapping={
            "tenant": tenant, "sha256": hash_key(key), "name": name[:200], "created_at": repr(time.time()),
            "revoked": "0",
        })
        await self.redis.sadd(f"{self.tenant_key(tenant)}:keys", key_id)
        return IssuedKey(key=key, key_id=key_id, tenant=tenant, webhook_secret=webhook_secret)

    async def list(self, tenant: str) -> list[dict[str, str]]:
        out = []
        for key_id in sorted(await self.redis.smembers(f"{self.tenant_key(validate_tenant(tenant))}:keys")):
            record = await self.redis.hgetall(self.key_key(key_id))
            if record:
                out.append({"key_id": key_id, "tenant": record.get("tenant", ""), "name": record.get("name", ""),
                            "created_at": record.get("created_at", ""), "revoked": record.get("revoked") == "1"})
        return out

    async def revoke(self, key_id: str) -> bool:
        if not await self.redis.exists(self.key_key(key_id)):
            return False
        await self.redis.hset(self.key_key(key_id), "revoked", "1")
        return True

    async def verify(self, key: str) -> str:
        """The tenant of ``key``; Unauthenticated when unknown, malformed or revoked."""
        match = KEY_RE.fullmatch(key or "")
        if not match:
            raise Unauthenticated("invalid API key")
        record = await self.redis.hgetall(self.key_key(match.group(1)))
        if not record or not hmac.compare_digest(record.get("sha256", ""), hash_key(key)):
            raise Unauthenticated("invalid API key")
        if record.get("revoked") == "1":
            raise Unauthenticated("API key revoked")
        return record["tenant"]


def key_from_metadata(metadata: Any) -> str | None:
    """The API key sent as ``authorization: Bearer <key>`` or ``x-api-key: <key>``."""
    for name, value in metadata or ():
        if isinstance(value, bytes):
            continue
        if name == "authorization":
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == "x-api-key" and value.strip():
            return value.strip()
    return None


class Authenticator:
    """Verifies a call's key (with a short in-memory cache) and binds its tenant for the handler."""

    def __init__(self, keys: KeyStore, cache_s: float = 5.0) -> None:
        self.keys = keys
        self.cache_s = cache_s
        self._cache: dict[str, tuple[str, float]] = {}

    async def tenant_for(self, metadata: Any) -> str:
        key = key_from_metadata(metadata)
        if not key:
            raise Unauthenticated("missing API key: send 'authorization: Bearer <key>' or 'x-api-key: <key>'")
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit and hit[1] > now:
            return hit[0]
        tenant = await self.keys.verify(key)
        if self.cache_s > 0:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (tenant, now + self.cache_s)
        return tenant

    def wrap(self, handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
        """The same handler with authentication in front of its behaviour (unary and server-streaming)."""
        if handler is None:
            return None
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                token = await self._bind(context)
                try:
                    return await inner_uu(request, context)
                finally:
                    _tenant.reset(token)

            return handler._replace(unary_unary=unary_unary)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                token = await self._bind(context)
                try:
                    async for item in inner_us(request, context):
                        yield item
                finally:
                    try:
                        _tenant.reset(token)
                    except ValueError:  # generator finalised in another context
                        pass

            return handler._replace(unary_stream=unary_stream)
        return handler  # no streaming-request RPCs in the control API

    async def _bind(self, context: grpc.aio.ServicerContext) -> contextvars.Token:
        try:
            tenant = await self.tenant_for(context.invocation_metadata())
        except Unauthenticated as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except Exception as exc:  # Redis down: do not turn it into INTERNAL with a stack trace
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot verify the API key: {type(exc).__name__}")
        return _tenant.set(tenant)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """The same gate as a grpc.aio server interceptor (for servers built with ``interceptors=``)."""

    def __init__(self, authenticator: Authenticator, services: set[str]) -> None:
        self.authenticator = authenticator
        self.services = services

    async def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        service = details.method.lstrip("/").split("/", 1)[0]
        return self.authenticator.wrap(handler) if service in self.services else handler


class _AuthenticatedHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, authenticator: Authenticator) -> None:
        self.inner = inner
        self.authenticator = authenticator

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        return self.authenticator.wrap(self.inner.service(handler_call_details))


class _Capture:
    """Stands in for a server when a generated ``add_*Servicer_to_server`` registers its handlers."""

    def __init__(self) -> None:
        self.handlers: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.handlers.extend(handlers)


def authenticated(add_fn: Callable[[Any, Any], None], authenticator: Authenticator) -> Callable[[Any, Any], None]:
    """An ``add_*Servicer_to_server`` replacement registering the servicer behind the auth gate.

    ``ServiceApp`` builds its server itself (no interceptor hook), so the gate wraps each method handler
    at registration instead; the effect is the interceptor's.
    """

    def add(servicer: Any, server: Any) -> None:
        capture = _Capture()
        add_fn(servicer, capture)
        server.add_generic_rpc_handlers(tuple(_AuthenticatedHandler(h, authenticator) for h in capture.handlers))

    return add


# -- join tokens -----------------------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class JoinClaims:
    conversation_id: str
    expires_at: float


def sign_join_token(secret: str, conversation_id: str, expires_at: float) -> str:
    payload = _b64(json.dumps({"c": conversation_id, "exp": int(expires_at), "v": 1}, separators=(",", ":")).encode())
    signature = _b64(hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{signature}"


def verify_join_token(token: str, conversation_id: str, secret: str, now: float | None = None) -> JoinClaims:
    """Check a join token for ``conversation_id``; raises InvalidJoinToken (UNAUTHENTICATED) if it is
    malformed, not signed with ``secret``, expired, or bound to another conversation."""
    if not isinstance(token, str) or token.count(".") != 1 or len(token) > 2048:
        raise InvalidJoinToken("malformed join token")
    payload, signature = token.split(".")
    expected = _b64(hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(signature, expected):
        raise InvalidJoinToken("join token signature does not match")
    try:
        claims = json.loads(_unb64(payload))
        conv, exp = str(claims["c"]), float(claims["exp"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidJoinToken("malformed join token") from exc
    if conv != conversation_id:
        raise InvalidJoinToken("join token is for another conversation")
    if (time.time() if now is None else now) >= exp:
        raise InvalidJoinToken("join token expired")
    return JoinClaims(conv, exp)


async def join_secret(redis: Any, prefix: str = "parley:", configured: str = "") -> str:
    """The join-token secret: the configured one, else the one kept in Redis (created on first use)."""
    if configured:
        return configured
    key = f"{prefix}control:secrets"
    await redis.hsetnx(key, "join_token", secrets.token_urlsafe(32))
    return await redis.hget(key, "join_token")
