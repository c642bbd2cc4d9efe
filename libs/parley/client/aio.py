"""``AsyncParleyClient``: the control plane from asyncio code."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc

from parley.client._common import (
    DEFAULT_ADDRESS,
    JobFailed,
    Page,
    ProgressCallback,
    api_error,
    conversation_status,
    echo_request,
    metadata,
    persona_message,
    photo_bytes,
    resolve_key,
    update_request,
)
from parley.v1 import control_pb2 as pb
from parley.v1 import control_pb2_grpc as pb_grpc

_TERMINAL = (pb.JOB_STATUS_SUCCEEDED, pb.JOB_STATUS_FAILED)
_OPTIONS = [("grpc.max_send_message_length", 16 * 1024 * 1024),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024)]


class AsyncParleyClient:
    """Personas, replicas, conversations, interactions, events and webhooks over gRPC.

    ``api_key`` defaults to ``$PARLEY_API_KEY``; ``address`` to ``$PARLEY_API_ADDRESS`` or
    ``127.0.0.1:50060``. Pass ``credentials`` (``grpc.ssl_channel_credentials()``) for TLS. Errors are
    raised as :class:`parley.client.ParleyAPIError` subclasses. Use ``async with`` or call ``close()``.
    """

    def __init__(self, address: str | None = None, api_key: str | None = None, *,
                 credentials: grpc.ChannelCredentials | None = None, timeout: float = 30.0) -> None:
        self.address = address or os.environ.get("PARLEY_API_ADDRESS", DEFAULT_ADDRESS)
        self._metadata = metadata(resolve_key(api_key))
        self.timeout = timeout
        if credentials is not None:
            self._channel = grpc.aio.secure_channel(self.address, credentials, options=_OPTIONS)
        else:
            self._channel = grpc.aio.insecure_channel(self.address, options=_OPTIONS)
        self.personas_stub = pb_grpc.PersonasStub(self._channel)
        self.replicas_stub = pb_grpc.ReplicasStub(self._channel)
        self.conversations_stub = pb_grpc.ConversationsStub(self._channel)
        self.webhooks_stub = pb_grpc.WebhooksStub(self._channel)

    async def __aenter__(self) -> AsyncParleyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, metadata=self._metadata, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise api_error(exc) from None

    # -- personas -----------------------------------------------------------------------------------
    async def create_persona(self, name: str, *, system_prompt: str = "", context: str = "",
                             default_replica_id: str = "", greeting: str = "",
                             layers: Mapping[str, Any] | pb.PersonaLayers | None = None) -> pb.Persona:
        """A new persona. ``layers`` as a dict, e.g. ``{"llm": {"model": "m"}, "tts": {"speed": 1.1}}``."""
        persona = persona_message(layers=layers, name=name, system_prompt=system_prompt, context=context,
                                  default_replica_id=default_replica_id, greeting=greeting)
        return await self._call(self.personas_stub.CreatePersona, pb.CreatePersonaRequest(persona=persona))

    async def get_persona(self, persona_id: str) -> pb.Persona:
        return await self._call(self.personas_stub.GetPersona, pb.GetPersonaRequest(persona_id=persona_id))

    async def list_personas(self, page_size: int = 0, page_token: str = "") -> Page[pb.Persona]:
        reply = await self._call(self.personas_stub.ListPersonas,
                                 pb.ListPersonasRequest(page_size=page_size, page_token=page_token))
        return Page(list(reply.personas), reply.next_page_token)

    async def iter_personas(self, page_size: int = 100) -> AsyncIterator[pb.Persona]:
        token = ""
        while True:
            page = await self.list_personas(page_size, token)
            for item in page.items:
                yield item
            if not (token := page.next_page_token):
                return

    async def update_persona(self, persona_id: str, **fields: Any) -> pb.Persona:
        """Change only the given fields (``name=...``, ``layers={"llm": {"model": "m"}}`` ...)."""
        return await self._call(self.personas_stub.UpdatePersona, update_request(persona_id, fields))

    async def delete_persona(self, persona_id: str) -> None:
        await self._call(self.personas_stub.DeletePersona, pb.DeletePersonaRequest(persona_id=persona_id))

    # -- replicas -----------------------------------------------------------------------------------
    async def create_replica(self, name: str, photo: str | os.PathLike[str] | bytes) -> tuple[pb.Replica, pb.Job]:
        """Start building a replica from a photo (path or bytes); returns the replica and its job."""
        data = await asyncio.to_thread(photo_bytes, photo)
        reply = await self._call(self.replicas_stub.CreateReplica, pb.CreateReplicaRequest(name=name, photo=data))
        return reply.replica, reply.job

    async def get_job(self, job_id: str) -> pb.Job:
        return await self._call(self.replicas_stub.GetJob, pb.GetJobRequest(job_id=job_id))

    async def wait_for_job(self, job_id: str, progress: ProgressCallback | None = None,
                           timeout: float | None = None) -> pb.Job:  # noqa: ASYNC109 - the gRPC deadline
        """Follow a job until it ends, calling ``progress(fraction, message)`` on each change.

        Returns the succeeded job; raises :class:`JobFailed` if it failed, TimeoutError after ``timeout``.
        """
        deadline = time.monotonic() + timeout if timeout else None
        job: pb.Job | None = None
        while True:  # the watch stream is resumed if it breaks (e.g. a control service restart)
            call = self.replicas_stub.WatchJob(pb.GetJobRequest(job_id=job_id), metadata=self._metadata,
                                               timeout=max(0.1, deadline - time.monotonic()) if deadline else None)
            try:
                async for job in call:
                    if progress is not None:
                        progress(job.progress, job.message)
                    if job.status in _TERMINAL:
                        break
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise TimeoutError(f"job {job_id} did not finish within {timeout} s") from None
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise api_error(exc) from None
                await asyncio.sleep(0.5)
            if job is not None and job.status in _TERMINAL:
                if job.status == pb.JOB_STATUS_FAILED:
                    raise JobFailed(job)
                return job
            if deadline and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not finish within {timeout} s")

    async def create_replica_and_wait(self, name: str, photo: str | os.PathLike[str] | bytes,
                                      progress: ProgressCallback | None = None,
                                      timeout: float | None = None) -> pb.Replica:  # noqa: ASYNC109
        replica, job = await self.create_replica(name, photo)
        await self.wait_for_job(job.job_id, progress, timeout)
        return await self.get_replica(replica.replica_id)

    async def get_replica(self, replica_id: str) -> pb.Replica:
        return await self._call(self.replicas_stub.GetReplica, pb.GetReplicaRequest(replica_id=replica_id))

    async def list_replicas(self, page_size: int = 0, page_token: str = "") -> Page[pb.Replica]:
        reply = await self._call(self.replicas_stub.ListReplicas,
                                 pb.ListReplicasRequest(page_size=page_size, page_token=page_token))
        return Page(list(reply.replicas), reply.next_page_token)

    async def delete_replica(self, replica_id: str) -> None:
        await self._call(self.replicas_stub.DeleteReplica, pb.DeleteReplicaRequest(replica_id=replica_id))

    # -- conversations ------------------------------------------------------------------------------
    async def create_conversation(self, persona_id: str = "", replica_id: str = "", *, name: str = "",
                                  callback_url: str = "", max_duration_s: float = 0,
                                  participant_join_timeout_s: float = 0, participant_absent_timeout_s: float = 0,
                                  custom_greeting: str = "", conversational_context: str = "") -> pb.Conversation:
        """A new conversation; its ``conversation_url`` is what the participant opens."""
        request = pb.CreateConversationRequest(
            persona_id=persona_id, replica_id=replica_id, name=name, callback_url=callback_url,
            max_duration_s=max_duration_s, participant_join_timeout_s=participant_join_timeout_s,
            participant_absent_timeout_s=participant_absent_timeout_s, custom_greeting=custom_greeting,
            conversational_context=conversational_context)
        return await self._call(self.conversations_stub.CreateConversation, request)

    async def get_conversation(self, conversation_id: str) -> pb.Conversation:
        return await self._call(self.conversations_stub.GetConversation,
                                pb.GetConversationRequest(conversation_id=conversation_id))

    async def list_conversations(self, status: str | int | None = None, page_size: int = 0,
                                 page_token: str = "") -> Page[pb.Conversation]:
        """``status``: "waiting", "active", "ended" or None for all."""
        reply = await self._call(self.conversations_stub.ListConversations, pb.ListConversationsRequest(
            status=conversation_status(status), page_size=page_size, page_token=page_token))
        return Page(list(reply.conversations), reply.next_page_token)

    async def end_conversation(self, conversation_id: str) -> pb.Conversation:
        return await self._call(self.conversations_stub.EndConversation,
                                pb.EndConversationRequest(conversation_id=conversation_id))

    # -- interactions -------------------------------------------------------------------------------
    async def interact(self, request: pb.InteractRequest) -> str:
        """Send any interaction; returns its id on the conversation's interactions stream."""
        return (await self._call(self.conversations_stub.Interact, request)).interaction_id

    async def echo(self, conversation_id: str, text: str | None = None, *, audio: bytes | None = None,
                   sample_rate: int = 16000, encoding: str = "pcm_s16le") -> str:
        """Make the replica say ``text`` (or play PCM ``audio``) exactly, bypassing the LLM."""
        return await self.interact(echo_request(conversation_id, text, audio, sample_rate, encoding))

    async def respond(self, conversation_id: str, text: str) -> str:
        """As if the user had said ``text``."""
        return await self.interact(pb.InteractRequest(conversation_id=conversation_id, respond=pb.Respond(text=text)))

    async def interrupt(self, conversation_id: str) -> str:
        return await self.interact(pb.InteractRequest(conversation_id=conversation_id, interrupt=pb.Interrupt()))

    async def overwrite_context(self, conversation_id: str, context: str) -> str:
        return await self.interact(pb.InteractRequest(
            conversation_id=conversation_id, overwrite_context=pb.OverwriteContext(context=context)))

    async def append_context(self, conversation_id: str, context: str) -> str:
        return await self.interact(pb.InteractRequest(
            conversation_id=conversation_id, append_context=pb.AppendContext(context=context)))

    async def set_emotion(self, conversation_id: str, emotion: str, intensity: float = 1.0) -> str:
        return await self.interact(pb.InteractRequest(
            conversation_id=conversation_id, set_emotion=pb.SetEmotion(emotion=emotion, intensity=intensity)))

    # -- events -------------------------------------------------------------------------------------
    async def events(self, conversation_id: str, after_event_id: str = "", follow: bool = True,
                     resume: bool = True) -> AsyncIterator[pb.ConversationEvent]:
        """The conversation's events, oldest first. With ``follow`` it waits for new ones and ends after
        the conversation ended; with ``resume`` a broken stream is reopened after the last event seen."""
        last = after_event_id
        while True:
            call = self.conversations_stub.StreamEvents(
                pb.StreamEventsRequest(conversation_id=conversation_id, after_event_id=last, follow=follow),
                metadata=self._metadata)
            try:
                async for event in call:
                    last = event.event_id
                    yield event
                return
            except grpc.RpcError as exc:
                if not (resume and exc.code() == grpc.StatusCode.UNAVAILABLE):
                    raise api_error(exc) from None
                await asyncio.sleep(0.5)
            finally:
                call.cancel()

    # -- webhooks -----------------------------------------------------------------------------------
    async def webhook_secret(self) -> str:
        return (await self._call(self.webhooks_stub.GetWebhookSecret, pb.GetWebhookSecretRequest())).secret

    async def rotate_webhook_secret(self) -> str:
        return (await self._call(self.webhooks_stub.RotateWebhookSecret, pb.GetWebhookSecretRequest())).secret

    async def list_deliveries(self, conversation_id: str, page_size: int = 0,
                              page_token: str = "") -> Page[pb.Delivery]:
        reply = await self._call(self.webhooks_stub.ListDeliveries, pb.ListDeliveriesRequest(
            conversation_id=conversation_id, page_size=page_size, page_token=page_token))
        return Page(list(reply.deliveries), reply.next_page_token)
