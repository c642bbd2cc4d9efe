"""Redis repositories of the control plane. The service holds no other state.

Keys (``p`` = ``key_prefix``, default ``parley:``):

    {p}control:seq                          INCR counter ordering every listed resource
    {p}control:secrets                      hash: join_token (HMAC key of join tokens)
    {p}control:tenant:{t}                   hash: webhook_secret, created_at
    {p}control:tenant:{t}:keys              set of API key ids
    {p}control:apikey:{key id}              hash: tenant, sha256, name, created_at, revoked
    {p}control:persona:{id}                 hash: tenant, seq, doc (Persona as proto JSON)
    {p}control:replica:{id}                 hash: tenant, seq, name, status, job_id, error, source, info (JSON),
                                            created_at, updated_at, path (the replica store root)
    {p}control:job:{id}                     hash: tenant, kind, resource_id, status, progress, message, error,
                                            attempts, created_at, started_at, finished_at, input
    {p}control:job:{id}:progress            stream of {status, progress, message} changes (WatchJob)
    {p}control:jobs:queue                   list of queued job ids (RPUSH / LMOVE)
    {p}control:jobs:running                 zset job id -> lease deadline (worker heartbeat)
    {p}control:conv:{id}                    hash: the conversation (see services.control.streams)
    {p}control:conv:{id}:deliveries         list of webhook delivery ids
    {p}control:delivery:{id}                hash: the delivery, its attempts (JSON) and body
    {p}control:webhooks:due                 zset delivery id -> next attempt time (claimed: + lease)
    {p}control:deadlines                    zset conversation id -> next timeout check
    {p}control:dispatch                     zset conversation id -> read its events until (inf while live)
    {p}control:tenant:{t}:{kind}            zset id -> seq, kind in personas, replicas, convs
    {p}control:tenant:{t}:convs:{status}    zset id -> seq per conversation status
    {p}conv:{id}:interactions / :events     streams shared with the session host (services.control.streams)
    {p}session:{id}                         the session-store record of the conversation
"""

from __future__ import annotations

import base64
import json
import math
import secrets
import time
from typing import Any

from google.protobuf import json_format

from parley.errors import InvalidInput, NotFound
from parley.v1 import control_pb2 as pb
from services.control import streams

INF = float("inf")

CONV_STATUS = {"waiting": pb.CONVERSATION_STATUS_WAITING, "active": pb.CONVERSATION_STATUS_ACTIVE,
               "ended": pb.CONVERSATION_STATUS_ENDED}
CONV_STATUS_NAME = {v: k for k, v in CONV_STATUS.items()}
REPLICA_STATUS = {"building": pb.REPLICA_STATUS_BUILDING, "ready": pb.REPLICA_STATUS_READY,
                  "failed": pb.REPLICA_STATUS_FAILED}
JOB_STATUS = {"queued": pb.JOB_STATUS_QUEUED, "running": pb.JOB_STATUS_RUNNING,
              "succeeded": pb.JOB_STATUS_SUCCEEDED, "failed": pb.JOB_STATUS_FAILED}
JOB_TERMINAL = ("succeeded", "failed")
DELIVERY_STATUS = {"pending": pb.DELIVERY_STATUS_PENDING, "succeeded": pb.DELIVERY_STATUS_SUCCEEDED,
                   "failed": pb.DELIVERY_STATUS_FAILED}


# ARGV: new status, status-index prefix, conversation id, seq, then field/value pairs.
_SET_STATUS = """
local old = redis.call('HGET', KEYS[1], 'status')
if not old then return -1 end
if old == 'ended' and ARGV[1] ~= 'ended' then return 0 end
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
if old ~= ARGV[1] then
  redis.call('ZREM', ARGV[2] .. old, ARGV[3])
  redis.call('ZADD', ARGV[2] .. ARGV[1], ARGV[4], ARGV[3])
end
return 1
"""


def new_id(kind_prefix: str) -> str:
    return kind_prefix + secrets.token_hex(10)


def _f(value: Any, default: float = 0.0) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


def encode_page_token(seq: float) -> str:
    return base64.urlsafe_b64encode(f"v1:{int(seq)}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> int | None:
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        version, _, value = text.partition(":")
        if version != "v1":
            raise ValueError(version)
        return int(value)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("page_token is not a token this API returned") from None


def persona_to_json(persona: pb.Persona) -> str:
    return json_format.MessageToJson(persona, preserving_proto_field_name=True, indent=None)


def persona_from_json(doc: str) -> pb.Persona:
    return json_format.Parse(doc, pb.Persona(), ignore_unknown_fields=True)


class ControlStore:
    """Typed access to the control plane's Redis keys (asyncio client with decode_responses=True)."""

    def __init__(self, redis: Any, prefix: str = "parley:") -> None:
        self.redis = redis
        self.p = prefix
        self._set_status = redis.register_script(_SET_STATUS)

    # -- key names ----------------------------------------------------------------------------------
    def k(self, *parts: str) -> str:
        return self.p + "control:" + ":".join(parts)

    def index(self, tenant: str, kind: str) -> str:
        return self.k("tenant", tenant, kind)

    def events_key(self, conversation_id: str) -> str:
        return streams.events_key(conversation_id, self.p)

    def interactions_key(self, conversation_id: str) -> str:
        return streams.interactions_key(conversation_id, self.p)

    async def next_seq(self) -> int:
        return int(await self.redis.incr(self.k("seq")))

    # -- generic pieces -----------------------------------------------------------------------------
    async def _owned(self, kind: str, resource_id: str, tenant: str) -> dict[str, str]:
        """The hash of ``kind:{id}`` if it belongs to ``tenant``; NotFound otherwise (same message)."""
        record = await self.redis.hgetall(self.k(kind, resource_id))
        if not record or record.get("tenant") != tenant:
            raise NotFound(f"{_label(kind)} {resource_id!r} not found")
        return record

    async def _page(self, index_key: str, size: int, token: str) -> tuple[list[str], str]:
        """Ids newest first, and the next page token."""
        after = decode_page_token(token)
        upper = f"({after}" if after is not None else "+inf"
        rows = await self.redis.zrevrangebyscore(index_key, upper, "-inf", start=0, num=size + 1, withscores=True)
        ids = [member for member, _ in rows[:size]]
        next_token = encode_page_token(rows[size - 1][1]) if len(rows) > size else ""
        return ids, next_token

    # -- personas ------------------------------------------------------------------------------------
    async def put_persona(self, tenant: str, persona: pb.Persona, seq: int | None = None) -> None:
        key = self.k("persona", persona.persona_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            mapping = {"tenant": tenant, "doc": persona_to_json(persona)}
            if seq is not None:
                mapping["seq"] = str(seq)
                pipe.zadd(self.index(tenant, "personas"), {persona.persona_id: seq})
            pipe.hset(key, mapping=mapping)
            await pipe.execute()

    async def get_persona(self, tenant: str, persona_id: str) -> pb.Persona:
        return persona_from_json((await self._owned("persona", persona_id, tenant))["doc"])

    async def list_personas(self, tenant: str, size: int, token: str) -> tuple[list[pb.Persona], str]:
        ids, next_token = await self._page(self.index(tenant, "personas"), size, token)
        docs = await self._hget_many("persona", ids, "doc")
        return [persona_from_json(d) for d in docs if d], next_token

    async def delete_persona(self, tenant: str, persona_id: str) -> None:
        await self._owned("persona", persona_id, tenant)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.k("persona", persona_id))
            pipe.zrem(self.index(tenant, "personas"), persona_id)
            await pipe.execute()

    async def _hget_many(self, kind: str, ids: list[str], field: str) -> list[str | None]:
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for resource_id in ids:
                pipe.hget(self.k(kind, resource_id), field)
            return await pipe.execute()

    async def _hgetall_many(self, kind: str, ids: list[str]) -> list[tuple[str, dict[str, str]]]:
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for resource_id in ids:
                pipe.hgetall(self.k(kind, resource_id))
            return [(i, r) for i, r in zip(ids, await pipe.execute(), strict=True) if r]

    # -- replicas and jobs ---------------------------------------------------------------------------
    async def create_replica_job(self, tenant: str, name: str, source: str, input_path: str,
                                 replica_path: str) -> tuple[pb.Replica, pb.Job]:
        replica_id, job_id, now = new_id("r_"), new_id("j_"), time.time()
        seq = await self.next_seq()
        replica = {"tenant": tenant, "seq": str(seq), "name": name, "status": "building", "job_id": job_id,
                   "error": "", "source": source, "info": "{}", "created_at": repr(now), "updated_at": repr(now),
                   "path": replica_path}
        job = {"tenant": tenant, "kind": "replica.build", "resource_id": replica_id, "status": "queued",
               "progress": "0", "message": "queued", "error": "", "attempts": "0", "created_at": repr(now),
               "started_at": "0", "finished_at": "0", "input": input_path}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.k("replica", replica_id), mapping=replica)
            pipe.zadd(self.index(tenant, "replicas"), {replica_id: seq})
            pipe.hset(self.k("job", job_id), mapping=job)
            pipe.xadd(self.k("job", job_id, "progress"), {"status": "queued", "progress": "0", "message": "queued"},
                      maxlen=1000, approximate=True)
            pipe.rpush(self.k("jobs", "queue"), job_id)
            await pipe.execute()
        return replica_from_hash(replica_id, replica), job_from_hash(job_id, job)

    async def get_replica_record(self, tenant: str, replica_id: str) -> dict[str, str]:
        return await self._owned("replica", replica_id, tenant)

    async def get_replica(self, tenant: str, replica_id: str) -> pb.Replica:
        return replica_from_hash(replica_id, await self._owned("replica", replica_id, tenant))

    async def list_replicas(self, tenant: str, size: int, token: str) -> tuple[list[pb.Replica], str]:
        ids, next_token = await self._page(self.index(tenant, "replicas"), size, token)
        return [replica_from_hash(i, r) for i, r in await self._hgetall_many("replica", ids)], next_token

    async def delete_replica(self, tenant: str, replica_id: str) -> dict[str, str]:
        record = await self._owned("replica", replica_id, tenant)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.k("replica", replica_id))
            pipe.zrem(self.index(tenant, "replicas"), replica_id)
            await pipe.execute()
        return record

    async def get_job(self, tenant: str, job_id: str) -> pb.Job:
        return job_from_hash(job_id, await self._owned("job", job_id, tenant))

    async def job_record(self, job_id: str) -> dict[str, str]:
        return await self.redis.hgetall(self.k("job", job_id))

    # -- conversations -------------------------------------------------------------------------------
    async def put_new_conversation(self, tenant: str, conversation_id: str, fields: dict[str, str],
                                   deadline: float) -> None:
        seq = await self.next_seq()
        fields = {**fields, "tenant": tenant, "seq": str(seq)}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.k("conv", conversation_id), mapping=fields)
            pipe.zadd(self.index(tenant, "convs"), {conversation_id: seq})
            pipe.zadd(self.index(tenant, "convs:" + fields["status"]), {conversation_id: seq})
            pipe.zadd(self.k("deadlines"), {conversation_id: deadline})
            pipe.zadd(self.k("dispatch"), {conversation_id: INF})
            await pipe.execute()
        try:  # the dispatcher's consumer group, from the first entry
            await self.redis.xgroup_create(self.events_key(conversation_id), "control", id="0", mkstream=True)
        except Exception as exc:  # BUSYGROUP: already there
            if "BUSYGROUP" not in str(exc):
                raise

    async def conversation_record(self, conversation_id: str) -> dict[str, str]:
        return await self.redis.hgetall(self.k("conv", conversation_id))

    async def get_conversation_record(self, tenant: str, conversation_id: str) -> dict[str, str]:
        return await self._owned("conv", conversation_id, tenant)

    async def list_conversations(self, tenant: str, status: str, size: int,
                                 token: str) -> tuple[list[pb.Conversation], str]:
        index = self.index(tenant, "convs:" + status if status else "convs")
        ids, next_token = await self._page(index, size, token)
        return [conversation_from_hash(i, r) for i, r in await self._hgetall_many("conv", ids)], next_token

    async def set_conversation_status(self, record: dict[str, str], conversation_id: str, status: str,
                                      **fields: str) -> bool:
        """Move a conversation to ``status`` (and its status index) with ``fields``, atomically; an ended
        conversation never changes back (returns False then)."""
        args = [status, self.index(record["tenant"], "convs:"), conversation_id, str(int(_f(record.get("seq"))))]
        for key, value in fields.items():
            args += [key, value]
        done = await self._set_status(keys=[self.k("conv", conversation_id)], args=args)
        if done == 1:
            record.update(status=status, **fields)
        return done == 1

    # -- webhooks ------------------------------------------------------------------------------------
    async def list_deliveries(self, tenant: str, conversation_id: str, size: int,
                              token: str) -> tuple[list[pb.Delivery], str]:
        await self._owned("conv", conversation_id, tenant)
        start = decode_page_token(token) or 0
        if start < 0:
            raise InvalidInput("page_token is not a token this API returned")
        ids = await self.redis.lrange(self.k("conv", conversation_id, "deliveries"), start, start + size)
        out = [delivery_from_hash(i, r) for i, r in await self._hgetall_many("delivery", ids[:size])]
        return out, encode_page_token(start + size) if len(ids) > size else ""


def _label(kind: str) -> str:
    return {"conv": "conversation"}.get(kind, kind)


def replica_from_hash(replica_id: str, r: dict[str, str]) -> pb.Replica:
    try:
        info = {str(k): str(v) for k, v in json.loads(r.get("info") or "{}").items()}
    except (ValueError, AttributeError):
        info = {}
    return pb.Replica(
        replica_id=replica_id, name=r.get("name", ""), status=REPLICA_STATUS.get(r.get("status", ""), 0),
        job_id=r.get("job_id", ""), error=r.get("error", ""), source=r.get("source", ""),
        created_at=_f(r.get("created_at")), updated_at=_f(r.get("updated_at")), info=info,
    )


def job_from_hash(job_id: str, j: dict[str, str]) -> pb.Job:
    return pb.Job(
        job_id=job_id, kind=j.get("kind", ""), resource_id=j.get("resource_id", ""),
        status=JOB_STATUS.get(j.get("status", ""), 0), progress=min(1.0, max(0.0, _f(j.get("progress")))),
        message=j.get("message", ""), error=j.get("error", ""), attempts=int(_f(j.get("attempts"))),
        created_at=_f(j.get("created_at")), started_at=_f(j.get("started_at")),
        finished_at=_f(j.get("finished_at")),
    )


def conversation_from_hash(conversation_id: str, c: dict[str, str]) -> pb.Conversation:
    return pb.Conversation(
        conversation_id=conversation_id, name=c.get("name", ""), status=CONV_STATUS.get(c.get("status", ""), 0),
        persona_id=c.get("persona_id", ""), replica_id=c.get("replica_id", ""),
        conversation_url=c.get("conversation_url", ""), callback_url=c.get("callback_url", ""),
        max_duration_s=_f(c.get("max_duration_s")), participant_join_timeout_s=_f(c.get("join_timeout_s")),
        participant_absent_timeout_s=_f(c.get("absent_timeout_s")), custom_greeting=c.get("custom_greeting", ""),
        conversational_context=c.get("conversational_context", ""), created_at=_f(c.get("created_at")),
        joined_at=_f(c.get("joined_at")), ended_at=_f(c.get("ended_at")), end_reason=c.get("end_reason", ""),
        participants=max(0, int(_f(c.get("participants")))), join_token_expires_at=_f(c.get("join_token_expires_at")),
    )


def delivery_from_hash(delivery_id: str, d: dict[str, str]) -> pb.Delivery:
    try:
        attempts = [pb.DeliveryAttempt(**a) for a in json.loads(d.get("attempts") or "[]")]
    except (ValueError, TypeError):
        attempts = []
    return pb.Delivery(
        delivery_id=delivery_id, conversation_id=d.get("conversation_id", ""), event_id=d.get("event_id", ""),
        event_type=d.get("event_type", ""), url=d.get("url", ""), status=DELIVERY_STATUS.get(d.get("status", ""), 0),
        attempts=attempts, next_attempt_at=_f(d.get("next_attempt_at")), created_at=_f(d.get("created_at")),
    )
