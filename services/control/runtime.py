"""The control plane's working parts: conversations (create, end, presence, timeouts), the event
dispatcher (events -> presence and webhook deliveries), the webhook sender and the reaper.

Every piece keeps its state in Redis and is safe to run in several control instances at once:
conversations end exactly once (``HSETNX ended_at``), events are shared out through a consumer group,
deliveries and jobs are claimed with leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import urllib.parse
import uuid
from typing import Any

import grpc
import httpx
import redis.asyncio as aioredis

from parley.client.webhooks import sign as sign_webhook
from parley.errors import InvalidInput, ParleyError
from parley.session_store import SessionStore
from parley.v1 import control_pb2 as pb
from services.control import streams
from services.control.auth import KeyStore, join_secret, sign_join_token
from services.control.config import ControlServiceConfig
from services.control.events import webhook_body
from services.control.jobs import JobSupervisor
from services.control.store import INF, ControlStore, _f, new_id
from services.control.validation import check_callback_target

log = logging.getLogger("parley.control")

GROUP = "control"
DISPATCH_GRACE_S = 30.0  # events XADDed this long after the end still reach webhooks

# Claim a due delivery: move its score past now by the lease, only if it is still due.
_CLAIM_DUE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""


class FailedPrecondition(ParleyError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ControlRuntime:
    """Shared state of one control instance: Redis clients, secrets, background tasks."""

    def __init__(self, config: ControlServiceConfig, http: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self.redis_url = config.server.redis_url
        self.redis = aioredis.from_url(self.redis_url, decode_responses=True)
        self.store = ControlStore(self.redis, config.key_prefix)
        self.keys = KeyStore(self.redis, config.key_prefix)
        self.sessions = SessionStore(self.redis_url, ttl_s=config.session_ttl_s, prefix=config.key_prefix)
        self.jobs = JobSupervisor(self.store, config, self.redis_url)
        self.instance = uuid.uuid4().hex[:12]
        self.join_secret = ""
        self._http = http
        self._own_http = http is None
        self._tasks: list[asyncio.Task[None]] = []
        self._deliveries: set[asyncio.Task[None]] = set()
        self._closing = False
        self._claim_due = self.redis.register_script(_CLAIM_DUE)

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.redis.ping()
        self.join_secret = await join_secret(self.redis, self.config.key_prefix, self.config.auth.join_token_secret)
        if self._http is None:
            self._http = httpx.AsyncClient(trust_env=False, follow_redirects=False,
                                           timeout=self.config.webhooks.timeout_s)
        await self.jobs.recover()
        for name, loop in (("dispatcher", self._dispatch_loop), ("webhooks", self._webhook_loop),
                           ("reaper", self._reaper_loop), ("jobs", self.jobs.run)):
            self._tasks.append(asyncio.create_task(loop(), name=f"control-{name}"))

    async def stop(self) -> None:
        self._closing = True
        await self.jobs.stop()
        tasks = [*self._tasks, *self._deliveries]
        for task in tasks:
            task.cancel()
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=2.0)
        self._tasks.clear()
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None
        await self.sessions.close()
        # Closing the pool also ends a read still waiting on a connection (seen with redis-py 8.1 when a
        # blocking XREADGROUP is cancelled at the wrong moment); the loops check _closing and exit.
        await self.redis.aclose()
        if pending:
            _, still = await asyncio.wait(pending, timeout=2.0)
            if still:
                log.warning("background tasks did not stop", extra={"tasks": [t.get_name() for t in still]})

    # -- conversations ------------------------------------------------------------------------------
    def deadline(self, record: dict[str, str], now: float) -> tuple[float, str]:
        """When the conversation times out next, and why (inf when it cannot)."""
        if record.get("status") == "ended":
            return INF, ""
        created = _f(record.get("created_at"), now)
        joined = _f(record.get("joined_at"))
        if not joined:
            return created + _f(record.get("join_timeout_s")), "join_timeout"
        candidates = [(joined + _f(record.get("max_duration_s")), "max_duration")]
        absent_since = _f(record.get("absent_since"))
        if absent_since and int(_f(record.get("participants"))) == 0:
            candidates.append((absent_since + _f(record.get("absent_timeout_s")), "participant_absent"))
        return min(candidates)

    def conversation_url(self, conversation_id: str, token: str) -> str:
        base = self.config.public_url.rstrip("/")
        return f"{base}/c/{conversation_id}?" + urllib.parse.urlencode({"t": token})

    async def create_conversation(self, tenant: str, fields: dict[str, str]) -> str:
        conversation_id = new_id("c_")
        now = time.time()
        expires = now + self.config.auth.join_token_ttl_s
        token = sign_join_token(self.join_secret, conversation_id, expires)
        # no "ended_at" until the end: end_conversation takes it with HSETNX, so a conversation ends once
        fields = {**fields, "status": "waiting", "created_at": repr(now), "joined_at": "0",
                  "end_reason": "", "participants": "0", "absent_since": "0",
                  "conversation_url": self.conversation_url(conversation_id, token),
                  "join_token_expires_at": repr(float(int(expires)))}
        deadline, _ = self.deadline(fields, now)
        await self.store.put_new_conversation(tenant, conversation_id, fields, deadline)
        await self.sessions.create(conversation_id, persona=fields.get("persona_id", ""),
                                   conversation=True, tenant=tenant)
        # the session record must outlive the longest the conversation can last
        ttl = int(max(self.config.session_ttl_s,
                      _f(fields["join_timeout_s"]) + _f(fields["max_duration_s"]) + 3600))
        await self.redis.expire(f"{self.config.key_prefix}session:{conversation_id}", ttl)
        return conversation_id

    async def end_conversation(self, conversation_id: str, reason: str, publish_shutdown: bool = True) -> bool:
        """End it once (True if this call ended it): status, shutdown event, stop the host, transcript."""
        key = self.store.k("conv", conversation_id)
        now = time.time()
        if not await self.redis.hsetnx(key, "ended_at", repr(now)):
            return False
        record = await self.store.conversation_record(conversation_id)
        if not record or "tenant" not in record:
            await self.redis.delete(key)
            return False
        await self.store.set_conversation_status(record, conversation_id, "ended", end_reason=reason[:200])
        events_key = self.store.events_key(conversation_id)
        interactions_key = self.store.interactions_key(conversation_id)
        retention = int(self.config.ended_retention_s)
        async with self.redis.pipeline(transaction=True) as pipe:
            if publish_shutdown:
                pipe.xadd(events_key, streams.entry(streams.SHUTDOWN, {"reason": reason}),
                          maxlen=streams.STREAM_MAXLEN, approximate=True)
            pipe.xadd(interactions_key, streams.entry("end", {"reason": reason}),
                      maxlen=streams.STREAM_MAXLEN, approximate=True)
            pipe.zrem(self.store.k("deadlines"), conversation_id)
            pipe.zadd(self.store.k("dispatch"), {conversation_id: now + DISPATCH_GRACE_S})
            await pipe.execute()
        transcript = []
        for _entry_id, fields in await self.redis.xrange(events_key, "-", "+"):
            kind, data, _ts = streams.decode_entry(fields)
            if kind == streams.UTTERANCE:
                transcript.append({k: data.get(k) for k in ("role", "text", "start_time", "end_time") if k in data})
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(events_key, streams.entry(streams.TRANSCRIPTION_READY, {"transcript": transcript}),
                      maxlen=streams.STREAM_MAXLEN, approximate=True)
            pipe.expire(events_key, retention)
            pipe.expire(interactions_key, retention)
            pipe.expire(self.store.k("conv", conversation_id, "participants"), retention)
            await pipe.execute()
        with contextlib.suppress(Exception):
            await self.sessions.update(conversation_id, status="ended")
        log.info("conversation ended", extra={"conversation_id": conversation_id, "reason": reason})
        return True

    async def _presence(self, conversation_id: str, kind: str, data: dict[str, Any]) -> None:
        record = await self.store.conversation_record(conversation_id)
        if not record or record.get("status") == "ended":
            return
        participant = str(data.get("participant_id") or "participant")[:200]
        members = self.store.k("conv", conversation_id, "participants")
        now = time.time()
        if kind == streams.PARTICIPANT_JOINED:
            await self.redis.sadd(members, participant)
        else:
            await self.redis.srem(members, participant)
        count = int(await self.redis.scard(members))
        updates = {"participants": str(count)}
        if kind == streams.PARTICIPANT_JOINED:
            updates["absent_since"] = "0"
            if not _f(record.get("joined_at")):
                updates["joined_at"] = repr(now)
        elif count == 0:
            updates["absent_since"] = repr(now)
        status = "active" if _f(record.get("joined_at")) or kind == streams.PARTICIPANT_JOINED else "waiting"
        if not await self.store.set_conversation_status(record, conversation_id, status, **updates):
            return  # ended meanwhile
        deadline, _ = self.deadline(record, now)
        await self.redis.zadd(self.store.k("deadlines"), {conversation_id: deadline})

    # -- event dispatcher ---------------------------------------------------------------------------
    async def handle_event(self, conversation_id: str, entry_id: str, fields: dict[str, Any]) -> None:
        """Presence, host-side shutdown, and webhook delivery for one event."""
        kind, data, _ts = streams.decode_entry(fields)
        if kind in (streams.PARTICIPANT_JOINED, streams.PARTICIPANT_LEFT):
            await self._presence(conversation_id, kind, data)
        elif kind == streams.SHUTDOWN:
            await self.end_conversation(conversation_id, str(data.get("reason") or "ended_by_host"),
                                        publish_shutdown=False)
        record = await self.store.conversation_record(conversation_id)
        url = record.get("callback_url", "") if record else ""
        if url:
            await self.enqueue_delivery(record["tenant"], conversation_id, url,
                                        webhook_body(conversation_id, entry_id, fields))

    async def _dispatch_loop(self) -> None:
        consumer = f"control-{self.instance}"
        last_claim = 0.0
        while not self._closing:
            try:
                live = await self.redis.zrangebyscore(self.store.k("dispatch"), time.time(), "+inf")
                if not live:
                    await asyncio.sleep(self.config.dispatch_block_ms / 1000)
                    continue
                if time.monotonic() - last_claim > 15:
                    last_claim = time.monotonic()
                    await self._claim_stale(live, consumer)
                for start in range(0, len(live), 200):
                    chunk = live[start:start + 200]
                    block = self.config.dispatch_block_ms if len(live) <= 200 else None
                    await self._read_chunk(chunk, consumer, block)
                if len(live) > 200:
                    await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event dispatcher iteration failed")
                await asyncio.sleep(0.5)

    async def _read_chunk(self, conversation_ids: list[str], consumer: str, block: int | None) -> None:
        keys = {self.store.events_key(c): ">" for c in conversation_ids}
        try:
            reply = await self.redis.xreadgroup(GROUP, consumer, keys, count=100, block=block)
        except aioredis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            for key in keys:
                with contextlib.suppress(aioredis.ResponseError):
                    await self.redis.xgroup_create(key, GROUP, id="0", mkstream=True)
            return
        for key, entries in reply or []:
            conversation_id = key[len(self.store.p + "conv:"):-len(":events")]
            await self._process(key, conversation_id, entries)

    async def _process(self, key: str, conversation_id: str, entries: list[Any]) -> None:
        for entry_id, fields in entries:
            try:
                await self.handle_event(conversation_id, entry_id, fields or {})
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("handling an event failed", extra={"conversation_id": conversation_id,
                                                                 "event_id": entry_id})
                continue  # left pending: claimed again later
            await self.redis.xack(key, GROUP, entry_id)

    async def _claim_stale(self, conversation_ids: list[str], consumer: str) -> None:
        """Take over events another (dead) instance read but never acknowledged."""
        for conversation_id in conversation_ids:
            key = self.store.events_key(conversation_id)
            with contextlib.suppress(aioredis.ResponseError):
                reply = await self.redis.xautoclaim(key, GROUP, consumer, min_idle_time=30_000, start_id="0-0",
                                                    count=100)
                entries = [e for e in (reply[1] if len(reply) > 1 else []) if e and e[1] is not None]
                if entries:
                    await self._process(key, conversation_id, entries)

    # -- webhooks -----------------------------------------------------------------------------------
    async def enqueue_delivery(self, tenant: str, conversation_id: str, url: str, body: dict[str, Any]) -> str:
        delivery_id = new_id("d_")
        now = time.time()
        record = {"tenant": tenant, "conversation_id": conversation_id, "event_id": body["event_id"],
                  "event_type": body["event_type"], "url": url, "status": "pending", "attempts": "[]",
                  "next_attempt_at": repr(now), "created_at": repr(now), "body": json.dumps(body, default=str)}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.store.k("delivery", delivery_id), mapping=record)
            pipe.rpush(self.store.k("conv", conversation_id, "deliveries"), delivery_id)
            pipe.zadd(self.store.k("webhooks", "due"), {delivery_id: now})
            await pipe.execute()
        return delivery_id

    async def _webhook_loop(self) -> None:
        cfg = self.config.webhooks
        due_key = self.store.k("webhooks", "due")
        while not self._closing:
            try:
                free = cfg.concurrency - len(self._deliveries)
                if free > 0:
                    now = time.time()
                    for delivery_id in await self.redis.zrangebyscore(due_key, "-inf", now, start=0, num=free):
                        if await self._claim_due(keys=[due_key], args=[delivery_id, now, now + cfg.lease_s]):
                            task = asyncio.create_task(self.deliver(delivery_id))
                            self._deliveries.add(task)
                            task.add_done_callback(self._deliveries.discard)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook loop iteration failed")
            await asyncio.sleep(cfg.poll_s)

    def backoff(self, attempt: int) -> float:
        cfg = self.config.webhooks
        delay = min(cfg.backoff_max_s, cfg.backoff_initial_s * cfg.backoff_factor ** max(0, attempt - 1))
        return delay * random.uniform(0.9, 1.1)

    async def deliver(self, delivery_id: str) -> None:
        """One attempt at one delivery; records it and schedules the next or finishes."""
        cfg = self.config.webhooks
        key = self.store.k("delivery", delivery_id)
        due_key = self.store.k("webhooks", "due")
        record = await self.redis.hgetall(key)
        if not record or record.get("status") != "pending":
            await self.redis.zrem(due_key, delivery_id)
            return
        attempts = json.loads(record.get("attempts") or "[]")
        body = record.get("body", "{}").encode()
        started = time.time()
        t0 = time.perf_counter()
        status_code, error, permanent = 0, "", False
        try:
            parts = urllib.parse.urlsplit(record["url"])
            await check_callback_target(parts, self.config)  # again: DNS may have changed since creation
            secret = await self.keys.webhook_secret(record["tenant"])
            ts = int(time.time())
            headers = {"Content-Type": "application/json", "User-Agent": "parley-webhooks/1",
                       "X-Parley-Signature": sign_webhook(secret, ts, body),
                       "X-Parley-Event-Id": record.get("event_id", ""),
                       "X-Parley-Event-Type": record.get("event_type", ""),
                       "X-Parley-Delivery-Id": delivery_id,
                       "X-Parley-Delivery-Attempt": str(len(attempts) + 1)}
            response = await self._http.post(record["url"], content=body, headers=headers, timeout=cfg.timeout_s)
            status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except InvalidInput as exc:
            error, permanent = f"refused: {exc}", True
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let one delivery kill the loop
            error = f"{type(exc).__name__}: {exc}"[:300]
        attempts.append({"at": started, "status_code": status_code, "error": error,
                         "duration_ms": round((time.perf_counter() - t0) * 1000, 2)})
        updates = {"attempts": json.dumps(attempts)}
        if not error:
            updates.update(status="succeeded", next_attempt_at="0")
            await self.redis.hset(key, mapping=updates)
            await self.redis.zrem(due_key, delivery_id)
        elif permanent or len(attempts) >= cfg.max_attempts:
            updates.update(status="failed", next_attempt_at="0")
            await self.redis.hset(key, mapping=updates)
            await self.redis.zrem(due_key, delivery_id)
            log.warning("webhook delivery failed", extra={"delivery_id": delivery_id, "error": error})
        else:
            next_at = time.time() + self.backoff(len(attempts))
            updates["next_attempt_at"] = repr(next_at)
            await self.redis.hset(key, mapping=updates)
            await self.redis.zadd(due_key, {delivery_id: next_at})

    # -- reaper -------------------------------------------------------------------------------------
    async def reap_once(self) -> list[tuple[str, str]]:
        """End every conversation past a timeout; recover stale jobs. Returns what it ended."""
        now = time.time()
        ended = []
        due = await self.redis.zrangebyscore(self.store.k("deadlines"), "-inf", now, start=0, num=200)
        for conversation_id in due:
            record = await self.store.conversation_record(conversation_id)
            if not record or record.get("status") == "ended":
                await self.redis.zrem(self.store.k("deadlines"), conversation_id)
                continue
            deadline, reason = self.deadline(record, now)
            if deadline <= now:
                if await self.end_conversation(conversation_id, reason):
                    ended.append((conversation_id, reason))
            else:
                await self.redis.zadd(self.store.k("deadlines"), {conversation_id: deadline})
        await self.redis.zremrangebyscore(self.store.k("dispatch"), "-inf", f"({now}")
        await self.jobs.recover()
        return ended

    async def _reaper_loop(self) -> None:
        while not self._closing:
            try:
                await self.reap_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reaper iteration failed")
            await asyncio.sleep(self.config.reaper_interval_s)

    async def tenant_webhook_secret(self, tenant: str) -> pb.WebhookSecret:
        return pb.WebhookSecret(secret=await self.keys.webhook_secret(tenant))
