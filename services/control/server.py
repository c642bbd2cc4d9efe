"""The control plane's gRPC services: Replicas, Personas, Conversations, Webhooks (see control.proto)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import field_mask_pb2, json_format

from parley import metrics
from parley.bootstrap import ServiceApp
from parley.errors import InvalidInput, NotFound, ParleyError, status_for
from parley.v1 import control_pb2 as pb
from parley.v1 import control_pb2_grpc as pb_grpc
from services.control import streams
from services.control.auth import Authenticator, authenticated, current_tenant
from services.control.config import ControlServiceConfig, replica_root
from services.control.events import to_proto
from services.control.jobs import remove_replica_files
from services.control.runtime import ControlRuntime, FailedPrecondition
from services.control.store import (
    CONV_STATUS_NAME,
    JOB_STATUS,
    JOB_TERMINAL,
    _f,
    conversation_from_hash,
    job_from_hash,
    new_id,
)
from services.control.validation import (
    check_callback_url,
    check_duration,
    check_id,
    check_persona_fields,
    check_text,
    interaction_payload,
    page_size,
)

log = logging.getLogger("parley.control")

SERVICES = ("parley.v1.Replicas", "parley.v1.Personas", "parley.v1.Conversations", "parley.v1.Webhooks")
STREAM_ID = re.compile(r"[0-9]{1,20}(-[0-9]{1,20})?")
API_KEY_MASK = "****"


def unary(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Error mapping, metrics and a latency sample for a unary handler."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        code = "OK"
        try:
            return await method(self, request, context)
        except ParleyError as exc:
            status, message = status_for(exc)
            code = status.name
            await context.abort(status, message)
        except grpc.aio.AbortError:
            code = "ABORTED"
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as exc:
            log.exception("rpc failed", extra={"method": name})
            code = "INTERNAL"
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")
        finally:
            metrics.STREAMS_TOTAL.labels(metrics.service_name(), name, code).inc()
            metrics.observe(f"rpc_{name}", time.perf_counter() - start)

    return wrapper


PHOTO_MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"))


def photo_extension(data: bytes) -> str:
    for magic, ext in PHOTO_MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    raise InvalidInput("photo must be a JPEG, PNG or WebP image")


class ReplicasServicer(pb_grpc.ReplicasServicer):
    def __init__(self, app: ServiceApp, rt: ControlRuntime) -> None:
        self.app = app
        self.rt = rt
        self.root = replica_root(rt.config)

    @unary
    async def CreateReplica(self, request: pb.CreateReplicaRequest, context: Any) -> pb.CreateReplicaResponse:
        tenant = current_tenant()
        limits = self.rt.config.limits
        check_text("name", request.name, limits.max_name_chars, required=True)
        source = request.WhichOneof("source")
        if source == "video":
            raise ParleyErrorUnimplemented("replicas from video are not supported yet; send a photo")
        if source is None or not request.photo:
            raise InvalidInput("photo is required (JPEG, PNG or WebP bytes)")
        if len(request.photo) > limits.max_photo_bytes:
            raise InvalidInput(f"photo is too large: {len(request.photo)} bytes (at most {limits.max_photo_bytes})")
        ext = photo_extension(request.photo)
        upload = self.root / ".uploads" / f"{tenant}-{new_id('u_')}.{ext}"
        await asyncio.to_thread(_write_file, upload, request.photo)
        replica, job = await self.rt.store.create_replica_job(tenant, request.name, "photo", str(upload),
                                                              str(self.root))
        log.info("replica build queued", extra={"replica_id": replica.replica_id, "job_id": job.job_id})
        return pb.CreateReplicaResponse(replica=replica, job=job)

    @unary
    async def GetReplica(self, request: pb.GetReplicaRequest, context: Any) -> pb.Replica:
        return await self.rt.store.get_replica(current_tenant(), check_id("replica", request.replica_id))

    @unary
    async def ListReplicas(self, request: pb.ListReplicasRequest, context: Any) -> pb.ListReplicasResponse:
        size = page_size(request.page_size, 50, self.rt.config.limits.max_page_size)
        items, token = await self.rt.store.list_replicas(current_tenant(), size, request.page_token)
        return pb.ListReplicasResponse(replicas=items, next_page_token=token)

    @unary
    async def DeleteReplica(self, request: pb.DeleteReplicaRequest, context: Any) -> pb.DeleteResponse:
        replica_id = check_id("replica", request.replica_id)
        record = await self.rt.store.delete_replica(current_tenant(), replica_id)
        await asyncio.to_thread(remove_replica_files, record.get("path", ""), replica_id)
        return pb.DeleteResponse()

    @unary
    async def GetJob(self, request: pb.GetJobRequest, context: Any) -> pb.Job:
        return await self.rt.store.get_job(current_tenant(), check_id("job", request.job_id))

    async def WatchJob(self, request: pb.GetJobRequest, context: Any) -> AsyncIterator[pb.Job]:
        async def body() -> AsyncIterator[pb.Job]:
            tenant = current_tenant()
            job_id = check_id("job", request.job_id)
            await self.rt.store.get_job(tenant, job_id)  # NotFound for others' jobs
            stream = self.rt.store.k("job", job_id, "progress")
            last = await self.rt.redis.xrevrange(stream, count=1)
            last_id = last[0][0] if last else "0-0"
            job = job_from_hash(job_id, await self.rt.store.job_record(job_id))
            yield job
            while job.status not in (pb.JOB_STATUS_SUCCEEDED, pb.JOB_STATUS_FAILED):
                reply = await self.rt.redis.xread({stream: last_id}, count=100, block=1000)
                entries = reply[0][1] if reply else []
                if not entries:  # nothing new: the hash is the truth (e.g. a job failed by recovery)
                    fresh = job_from_hash(job_id, await self.rt.store.job_record(job_id))
                    if fresh.status != job.status:
                        job = fresh
                        yield job
                    continue
                for entry_id, fields in entries:  # every progress report, in order
                    last_id = entry_id
                    update = pb.Job()
                    update.CopyFrom(job)
                    status = JOB_STATUS.get(fields.get("status", ""), 0)
                    if status in (pb.JOB_STATUS_SUCCEEDED, pb.JOB_STATUS_FAILED):
                        update = job_from_hash(job_id, await self.rt.store.job_record(job_id))
                    else:
                        update.status = status or update.status
                        if "progress" in fields:
                            update.progress = min(1.0, max(0.0, _f(fields["progress"])))
                        update.message = fields.get("message", update.message)
                        if "attempts" in fields:
                            update.attempts = int(_f(fields["attempts"]))
                    if update != job:
                        job = update
                        yield job
                    if job.status in (pb.JOB_STATUS_SUCCEEDED, pb.JOB_STATUS_FAILED):
                        return

        async for item in self.app.stream("WatchJob", context, body):
            yield item


def _stream_id_ok(value: str) -> bool:
    """A Redis stream id: ``ms`` or ``ms-seq``, both unsigned 64-bit."""
    return bool(STREAM_ID.fullmatch(value)) and all(int(p) < 2**64 for p in value.split("-"))


class ParleyErrorUnimplemented(ParleyError):
    code = grpc.StatusCode.UNIMPLEMENTED


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


PERSONA_PATHS = {
    "name", "system_prompt", "context", "default_replica_id", "greeting", "layers",
    "layers.llm", "layers.llm.backend", "layers.llm.base_url", "layers.llm.model", "layers.llm.api_key",
    "layers.llm.sampling", "layers.llm.sampling.temperature", "layers.llm.sampling.top_p",
    "layers.llm.sampling.max_tokens", "layers.llm.tools",
    "layers.tts", "layers.tts.voice", "layers.tts.speed", "layers.asr", "layers.asr.model", "layers.asr.language",
    "layers.turn_taking", "layers.turn_taking.patience", "layers.turn_taking.interruptibility",
    "layers.perception", "layers.perception.enabled",
}


def public_persona(persona: pb.Persona) -> pb.Persona:
    out = pb.Persona()
    out.CopyFrom(persona)
    if out.layers.llm.api_key:
        out.layers.llm.api_key = API_KEY_MASK
    return out


class PersonasServicer(pb_grpc.PersonasServicer):
    def __init__(self, rt: ControlRuntime) -> None:
        self.rt = rt

    async def _check(self, tenant: str, persona: pb.Persona) -> None:
        check_persona_fields(persona, self.rt.config.limits)
        if persona.default_replica_id:
            try:
                await self.rt.store.get_replica_record(tenant, persona.default_replica_id)
            except NotFound:
                raise InvalidInput(
                    f"persona.default_replica_id {persona.default_replica_id!r} names no replica") from None

    @unary
    async def CreatePersona(self, request: pb.CreatePersonaRequest, context: Any) -> pb.Persona:
        tenant = current_tenant()
        persona = pb.Persona()
        persona.CopyFrom(request.persona)
        if persona.layers.llm.api_key == API_KEY_MASK:
            raise InvalidInput(f"persona.layers.llm.api_key {API_KEY_MASK!r} is the masked value, not a key")
        await self._check(tenant, persona)
        persona.persona_id = new_id("p_")
        persona.created_at = persona.updated_at = time.time()
        await self.rt.store.put_persona(tenant, persona, seq=await self.rt.store.next_seq())
        return public_persona(persona)

    @unary
    async def GetPersona(self, request: pb.GetPersonaRequest, context: Any) -> pb.Persona:
        persona_id = check_id("persona", request.persona_id)
        return public_persona(await self.rt.store.get_persona(current_tenant(), persona_id))

    @unary
    async def ListPersonas(self, request: pb.ListPersonasRequest, context: Any) -> pb.ListPersonasResponse:
        size = page_size(request.page_size, 50, self.rt.config.limits.max_page_size)
        items, token = await self.rt.store.list_personas(current_tenant(), size, request.page_token)
        return pb.ListPersonasResponse(personas=[public_persona(p) for p in items], next_page_token=token)

    @unary
    async def UpdatePersona(self, request: pb.UpdatePersonaRequest, context: Any) -> pb.Persona:
        tenant = current_tenant()
        persona_id = check_id("persona", request.persona.persona_id, "persona.persona_id")
        paths = list(request.update_mask.paths)
        if not paths:
            raise InvalidInput("update_mask must name at least one field (e.g. 'name', 'layers.llm.model')")
        unknown = [p for p in paths if p not in PERSONA_PATHS]
        if unknown:
            raise InvalidInput(f"update_mask path {unknown[0][:80]!r} is not an updatable Persona field")
        current = await self.rt.store.get_persona(tenant, persona_id)
        merged = pb.Persona()
        merged.CopyFrom(current)
        source = pb.Persona()
        source.CopyFrom(request.persona)
        if source.layers.llm.api_key == API_KEY_MASK:  # echoing a fetched persona back keeps the key
            source.layers.llm.api_key = current.layers.llm.api_key
        mask = field_mask_pb2.FieldMask(paths=paths)
        mask.MergeMessage(source, merged, replace_message_field=True, replace_repeated_field=True)
        merged.persona_id = persona_id
        merged.created_at = current.created_at
        merged.updated_at = time.time()
        await self._check(tenant, merged)
        await self.rt.store.put_persona(tenant, merged)
        return public_persona(merged)

    @unary
    async def DeletePersona(self, request: pb.DeletePersonaRequest, context: Any) -> pb.DeleteResponse:
        await self.rt.store.delete_persona(current_tenant(), check_id("persona", request.persona_id))
        return pb.DeleteResponse()


class ConversationsServicer(pb_grpc.ConversationsServicer):
    def __init__(self, app: ServiceApp, rt: ControlRuntime) -> None:
        self.app = app
        self.rt = rt

    async def _spec(self, tenant: str, request: pb.CreateConversationRequest) -> dict[str, str]:
        cfg = self.rt.config
        limits = cfg.limits
        check_id("persona", request.persona_id, required=False)
        check_id("replica", request.replica_id, required=False)
        check_text("name", request.name, limits.max_name_chars)
        check_text("custom_greeting", request.custom_greeting, limits.max_greeting_chars)
        check_text("conversational_context", request.conversational_context, limits.max_context_chars)
        max_duration = check_duration("max_duration_s", request.max_duration_s, cfg.defaults.max_duration_s,
                                      limits.max_duration_s)
        join_timeout = check_duration("participant_join_timeout_s", request.participant_join_timeout_s,
                                      cfg.defaults.participant_join_timeout_s, limits.max_timeout_s)
        absent_timeout = check_duration("participant_absent_timeout_s", request.participant_absent_timeout_s,
                                        cfg.defaults.participant_absent_timeout_s, limits.max_timeout_s)
        if request.persona_id:
            try:
                persona = await self.rt.store.get_persona(tenant, request.persona_id)
            except NotFound:
                raise InvalidInput(f"persona_id {request.persona_id!r} names no persona") from None
        else:
            persona = pb.Persona(system_prompt=cfg.defaults.system_prompt)
        replica_id = request.replica_id or persona.default_replica_id
        if replica_id:
            try:
                replica = await self.rt.store.get_replica_record(tenant, replica_id)
            except NotFound:
                field = "replica_id" if request.replica_id else "the persona's default_replica_id"
                raise InvalidInput(f"{field} {replica_id!r} names no replica") from None
            if replica.get("status") != "ready":
                raise FailedPrecondition(f"replica {replica_id!r} is {replica.get('status')}, not ready")
        callback = await check_callback_url(request.callback_url, cfg)
        context = "\n\n".join(x for x in (persona.context, request.conversational_context) if x)
        layers = json.loads(json.dumps(_layers_dict(persona)))
        spec = {"persona_id": request.persona_id, "replica_id": replica_id, "system_prompt": persona.system_prompt,
                "context": context, "greeting": request.custom_greeting or persona.greeting, "layers": layers,
                "name": persona.name}
        return {"name": request.name, "persona_id": request.persona_id, "replica_id": replica_id,
                "callback_url": callback, "max_duration_s": repr(max_duration), "join_timeout_s": repr(join_timeout),
                "absent_timeout_s": repr(absent_timeout), "custom_greeting": request.custom_greeting,
                "conversational_context": request.conversational_context, "spec": json.dumps(spec)}

    async def _get(self, conversation_id: str) -> dict[str, str]:
        return await self.rt.store.get_conversation_record(current_tenant(), check_id("conversation", conversation_id))

    @unary
    async def CreateConversation(self, request: pb.CreateConversationRequest, context: Any) -> pb.Conversation:
        tenant = current_tenant()
        fields = await self._spec(tenant, request)
        conversation_id = await self.rt.create_conversation(tenant, fields)
        log.info("conversation created", extra={"conversation_id": conversation_id})
        return conversation_from_hash(conversation_id, await self.rt.store.conversation_record(conversation_id))

    @unary
    async def GetConversation(self, request: pb.GetConversationRequest, context: Any) -> pb.Conversation:
        return conversation_from_hash(request.conversation_id, await self._get(request.conversation_id))

    @unary
    async def ListConversations(self, request: pb.ListConversationsRequest,
                                context: Any) -> pb.ListConversationsResponse:
        if request.status and request.status not in CONV_STATUS_NAME:
            raise InvalidInput(f"status {request.status} is not a conversation status")
        size = page_size(request.page_size, 50, self.rt.config.limits.max_page_size)
        items, token = await self.rt.store.list_conversations(
            current_tenant(), CONV_STATUS_NAME.get(request.status, ""), size, request.page_token)
        return pb.ListConversationsResponse(conversations=items, next_page_token=token)

    @unary
    async def EndConversation(self, request: pb.EndConversationRequest, context: Any) -> pb.Conversation:
        await self._get(request.conversation_id)
        await self.rt.end_conversation(request.conversation_id, "ended_by_api")
        return conversation_from_hash(request.conversation_id, await self._get(request.conversation_id))

    @unary
    async def Interact(self, request: pb.InteractRequest, context: Any) -> pb.InteractResponse:
        record = await self._get(request.conversation_id)
        kind, data = interaction_payload(request, self.rt.config.limits)
        if record.get("status") == "ended":
            raise FailedPrecondition(f"conversation {request.conversation_id!r} has ended")
        conv_key = self.rt.store.k("conv", request.conversation_id)
        async with self.rt.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.rt.store.interactions_key(request.conversation_id), streams.entry(kind, data),
                      maxlen=streams.STREAM_MAXLEN, approximate=True)
            if kind == "overwrite_context":
                pipe.hset(conv_key, "conversational_context", data["context"])
            elif kind == "append_context":
                joined = "\n\n".join(x for x in (record.get("conversational_context", ""), data["context"]) if x)
                pipe.hset(conv_key, "conversational_context", joined[-self.rt.config.limits.max_context_chars:])
            entry_id, *_ = await pipe.execute()
        return pb.InteractResponse(interaction_id=entry_id)

    async def StreamEvents(self, request: pb.StreamEventsRequest, context: Any) -> AsyncIterator[pb.ConversationEvent]:
        async def body() -> AsyncIterator[pb.ConversationEvent]:
            conversation_id = request.conversation_id
            await self._get(conversation_id)
            key = self.rt.store.events_key(conversation_id)
            after = request.after_event_id
            if after == "$":
                last = await self.rt.redis.xrevrange(key, count=1)
                after = last[0][0] if last else "0-0"
            elif not after:
                after = "0-0"
            elif not _stream_id_ok(after):
                raise InvalidInput("after_event_id must be an event id like '1700000000000-0', '' or '$'")
            idle_since = time.monotonic()
            while True:
                block = 1000 if request.follow else None
                reply = await self.rt.redis.xread({key: after}, count=200, block=block)
                entries = reply[0][1] if reply else []
                for entry_id, fields in entries:
                    after = entry_id
                    event = to_proto(conversation_id, entry_id, fields or {})
                    yield event
                    if event.event_type == streams.TRANSCRIPTION_READY:
                        return
                if entries:
                    idle_since = time.monotonic()
                    continue
                if not request.follow:
                    return
                status = await self.rt.redis.hget(self.rt.store.k("conv", conversation_id), "status")
                if status in (None, "ended") and time.monotonic() - idle_since > 2.0:
                    return

        async for item in self.app.stream("StreamEvents", context, body):
            yield item


class WebhooksServicer(pb_grpc.WebhooksServicer):
    def __init__(self, rt: ControlRuntime) -> None:
        self.rt = rt

    @unary
    async def GetWebhookSecret(self, request: pb.GetWebhookSecretRequest, context: Any) -> pb.WebhookSecret:
        return await self.rt.tenant_webhook_secret(current_tenant())

    @unary
    async def RotateWebhookSecret(self, request: pb.GetWebhookSecretRequest, context: Any) -> pb.WebhookSecret:
        return pb.WebhookSecret(secret=await self.rt.keys.rotate_webhook_secret(current_tenant()))

    @unary
    async def ListDeliveries(self, request: pb.ListDeliveriesRequest, context: Any) -> pb.ListDeliveriesResponse:
        conversation_id = check_id("conversation", request.conversation_id)
        size = page_size(request.page_size, 100, 500)
        items, token = await self.rt.store.list_deliveries(current_tenant(), conversation_id, size, request.page_token)
        return pb.ListDeliveriesResponse(deliveries=items, next_page_token=token)


def _layers_dict(persona: pb.Persona) -> dict[str, Any]:
    return json_format.MessageToDict(persona.layers, preserving_proto_field_name=True)


def build_app(config: ControlServiceConfig, runtime: ControlRuntime | None = None) -> ServiceApp:
    """The control service app (health, reflection, metrics from ServiceApp; auth on every control RPC)."""
    server_config = config.server.model_copy(update={"check_sessions": False})
    app = ServiceApp("control", server_config)
    rt = runtime or ControlRuntime(config)
    gate = Authenticator(rt.keys, config.auth.key_cache_s)
    app.add_service(SERVICES[0], authenticated(pb_grpc.add_ReplicasServicer_to_server, gate), ReplicasServicer(app, rt))
    app.add_service(SERVICES[1], authenticated(pb_grpc.add_PersonasServicer_to_server, gate), PersonasServicer(rt))
    app.add_service(SERVICES[2], authenticated(pb_grpc.add_ConversationsServicer_to_server, gate),
                    ConversationsServicer(app, rt))
    app.add_service(SERVICES[3], authenticated(pb_grpc.add_WebhooksServicer_to_server, gate), WebhooksServicer(rt))
    app.on_startup(rt.start)
    app.on_shutdown(rt.stop)
    app.runtime = rt  # type: ignore[attr-defined] - tests and embedding
    return app


__all__ = ["build_app", "SERVICES", "JOB_TERMINAL"]
