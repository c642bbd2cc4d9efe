"""Checking Parley webhook signatures in the receiving backend.

Each POST carries ``X-Parley-Signature: t=<unix seconds>,v1=<hex>``, where ``<hex>`` is
HMAC-SHA256 keyed with the tenant's webhook secret over ``"<t>." + raw body``. Verify against the raw
bytes (before JSON parsing) and reject stale timestamps to stop replays::

    from parley.client import verify_webhook
    event = verify_webhook(secret, request.body, request.headers["X-Parley-Signature"])
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any


class WebhookSignatureError(ValueError):
    """The signature header is missing, malformed, stale, or does not match the body."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The header value Parley sends for ``body`` at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_webhook(secret: str, body: bytes, signature_header: str | None, tolerance_s: float = 300.0,
                   now: float | None = None) -> dict[str, Any]:
    """The event (parsed JSON body) if the signature is valid and fresh; WebhookSignatureError otherwise."""
    if not signature_header:
        raise WebhookSignatureError("missing X-Parley-Signature header")
    parts: dict[str, list[str]] = {}
    for item in signature_header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError, IndexError):
        raise WebhookSignatureError("malformed X-Parley-Signature header") from None
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        raise WebhookSignatureError("stale webhook timestamp")
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    if not any(hmac.compare_digest(expected, given) for given in parts.get("v1", [])):
        raise WebhookSignatureError("webhook signature does not match")
    try:
        return json.loads(body)
    except ValueError:
        raise WebhookSignatureError("webhook body is not JSON") from None
