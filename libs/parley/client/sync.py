"""``ParleyClient``: the control plane from blocking code (same methods as ``AsyncParleyClient``)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
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


class ParleyClient:
    """Blocking client; see :class:`parley.client.AsyncParleyClient` for the behaviour of each method."""

    def __init__(self, address: str | None = None, api_key: str | None = None, *,
                 credentials: grpc.ChannelCredentials | None = None, timeout: float = 30.0) -> None:
        self.address = address or os.environ.get("PARLEY_API_ADDRESS", DEFAULT_ADDRESS)
        self._metadata = metadata(resolve_key(api_key))
        self.timeout = timeout
        if credentials is not None:
            self._channel = grpc.secure_channel(self.address, credentials, options=_OPTIONS)
        else:
            self._channel = grpc.insecure_channel(self.address, options=_OPTIONS)
        self.personas_stub = pb_grpc.PersonasStub(self._channel)
        self.replicas_stub = pb_grpc.ReplicasStub(self._channel)
        self.conversations_stub = pb_grpc.ConversationsStub(self._channel)
        self.webhooks_stub = pb_grpc.WebhooksStub(self._channel)

    def __enter__(self) -> ParleyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, metadata=self._metadata, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise api_error(exc) from None

    # -- personas -----------------------------------------------------------------------------------
    def create_persona(self, name: str, *, system_prompt: str = "", context: str = "", default_replica_id: str = "",
                       greeting: str = "", layers: Mapping[str, Any] | pb.PersonaLayers | None = None) -> pb.Persona:
        persona = persona_message(layers=layers, name=name, system_prompt=system_prompt, context=context,
                                  default_replica_id=default_replica_id, greeting=greeting)
        return self._call(self.personas_stub.CreatePersona, pb.CreatePersonaRequest(persona=persona))

    def get_persona(self, persona_id: str) -> pb.Persona:
        return self._call(self.personas_stub.GetPersona, pb.GetPersonaRequest(persona_id=persona_id))

    def list_personas(self, page_size: int = 0, page_token: str = "") -> Page[pb.Persona]:
        reply = self._call(self.personas_stub.ListPersonas,
                           pb.ListPersonasRequest(page_size=page_size, page_token=page_token))
        return Page(list(reply.personas), reply.next_page_token)

    def iter_personas(self, page_size: int = 100) -> Iterator[pb.Persona]:
        token = ""
        while True:
            page = self.list_personas(page_size, token)
            yield from page.items
            if not (token := page.next_page_token):
                return

    def update_persona(self, persona_id: str, **fields: Any) -> pb.Persona:
        return self._call(self.personas_stub.UpdatePersona, update_request(persona_id, fields))

    def delete_persona(self, persona_id: str) -> None:
        self._call(self.personas_stub.DeletePersona, pb.DeletePersonaRequest(persona_id=persona_id))

    # -- replicas -----------------------------------------------------------------------------------
    def create_replica(self, name: str, photo: str | os.PathLike[str] | bytes) -> tuple[pb.Replica, pb.Job]:
        reply = self._call(self.replicas_stub.CreateReplica,
                           pb.CreateReplicaRequest(name=name, photo=photo_bytes(photo)))
        return reply.replica, reply.job

    def get_job(self, job_id: str) -> pb.Job:
        return self._call(self.replicas_stub.GetJob, pb.GetJobRequest(job_id=job_id))

    def wait_for_job(self, job_id: str, progress: ProgressCallback | None = None,
                     timeout: float | None = None) -> pb.Job:
        deadline = time.monotonic() + timeout if timeout else None
        job: pb.Job | None = None
        while True:
            remaining = max(0.1, deadline - time.monotonic()) if deadline else None
            try:
                for job in self.replicas_stub.WatchJob(pb.GetJobRequest(job_id=job_id), metadata=self._metadata,
                                                       timeout=remaining):
                    if progress is not None:
                        progress(job.progress, job.message)
                    if job.status in _TERMINAL:
                        break
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise TimeoutError(f"job {job_id} did not finish within {timeout} s") from None
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise api_error(exc) from None
                time.sleep(0.5)
            if job is not None and job.status in _TERMINAL:
                if job.status == pb.JOB_STATUS_FAILED:
                    raise JobFailed(job)
                return job
            if deadline and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not finish within {timeout} s")

    def create_replica_and_wait(self, name: str, photo: str | os.PathLike[str] | bytes,
                                progress: ProgressCallback | None = None, timeout: float | None = None) -> pb.Replica:
        replica, job = self.create_replica(name, photo)
        self.wait_for_job(job.job_id, progress, timeout)
        return self.get_replica(replica.replica_id)

    def get_replica(self, replica_id: str) -> pb.Replica:
        return self._call(self.replicas_stub.GetReplica, pb.GetReplicaRequest(replica_id=replica_id))

    def list_replicas(self, page_size: int = 0, page_token: str = "") -> Page[pb.Replica]:
        reply = self._call(self.replicas_stub.ListReplicas,
                           pb.ListReplicasRequest(page_size=page_size, page_token=page_token))
        return Page(list(reply.replicas), reply.next_page_token)

    def delete_replica(self, replica_id: str) -> None:
        self._call(self.replicas_stub.DeleteReplica, pb.DeleteReplicaRequest(replica_id=replica_id))

    # -- conversations ------------------------------------------------------------------------------
    def create_conversation(self, persona_id: str = "", replica_id: str = "", *, name: str = "",
                            callback_url: str = "", max_duration_s: float = 0, participant_join_timeout_s: float = 0,
                            participant_absent_timeout_s: float = 0, custom_greeting: str = "",
                            conversational_context: str = "") -> pb.Conversation:
        request = pb.CreateConversationRequest(
            persona_id=persona_id, replica_id=replica_id, name=name, callback_url=callback_url,
            max_duration_s=max_duration_s, participant_join_timeout_s=participant_join_timeout_s,
            participant_absent_timeout_s=participant_absent_timeout_s, custom_greeting=custom_greeting,
            conversational_context=conversational_context)
        return self._call(self.conversations_stub.CreateConversation, request)

    def get_conversation(self, conversation_id: str) -> pb.Conversation:
        return self._call(self.conversations_stub.GetConversation,
                          pb.GetConversationRequest(conversation_id=conversation_id))

    def list_conversations(self, status: str | int | None = None, page_size: int = 0,
                           page_token: str = "") -> Page[pb.Conversation]:
        reply = self._call(self.conversations_stub.ListConversations, pb.ListConversationsRequest(
            status=conversation_status(status), page_size=page_size, page_token=page_token))
        return Page(list(reply.conversations), reply.next_page_token)

    def end_conversation(self, conversation_id: str) -> pb.Conversation:
        return self._call(self.conversations_stub.EndConversation,
                          pb.EndConversationRequest(conversation_id=conversation_id))

    # -- interactions -------------------------------------------------------------------------------
    def interact(self, request: pb.InteractRequest) -> str:
        return self._call(self.conversations_stub.Interact, request).interaction_id

    def echo(self, conversation_id: str, text: str | None = None, *, audio: bytes | None = None,
             sample_rate: int = 16000, encoding: str = "pcm_s16le") -> str:
        return self.interact(echo_request(conversation_id, text, audio, sample_rate, encoding))

    def respond(self, conversation_id: str, text: str) -> str:
        return self.interact(pb.InteractRequest(conversation_id=conversation_id, respond=pb.Respond(text=text)))

    def interrupt(self, conversation_id: str) -> str:
        return self.interact(pb.InteractRequest(conversation_id=conversation_id, interrupt=pb.Interrupt()))

    def overwrite_context(self, conversation_id: str, context: str) -> str:
        return self.interact(pb.InteractRequest(conversation_id=conversation_id,
                                                overwrite_context=pb.OverwriteContext(context=context)))

    def append_context(self, conversation_id: str, context: str) -> str:
        return self.interact(pb.InteractRequest(conversation_id=conversation_id,
                                                append_context=pb.AppendContext(context=context)))

    def set_emotion(self, conversation_id: str, emotion: str, intensity: float = 1.0) -> str:
        return self.interact(pb.InteractRequest(conversation_id=conversation_id,
                                                set_emotion=pb.SetEmotion(emotion=emotion, intensity=intensity)))

    # -- events -------------------------------------------------------------------------------------
    def events(self, conversation_id: str, after_event_id: str = "", follow: bool = True,
               resume: bool = True) -> Iterator[pb.ConversationEvent]:
        last = after_event_id
        while True:
            call = self.conversations_stub.StreamEvents(
                pb.StreamEventsRequest(conversation_id=conversation_id, after_event_id=last, follow=follow),
                metadata=self._metadata)
            try:
                for event in call:
                    last = event.event_id
                    yield event
                return
            except grpc.RpcError as exc:
                if not (resume and exc.code() == grpc.StatusCode.UNAVAILABLE):
                    raise api_error(exc) from None
                time.sleep(0.5)
            finally:
                call.cancel()

    # -- webhooks -----------------------------------------------------------------------------------
    def webhook_secret(self) -> str:
        return self._call(self.webhooks_stub.GetWebhookSecret, pb.GetWebhookSecretRequest()).secret

    def rotate_webhook_secret(self) -> str:
        return self._call(self.webhooks_stub.RotateWebhookSecret, pb.GetWebhookSecretRequest()).secret

    def list_deliveries(self, conversation_id: str, page_size: int = 0, page_token: str = "") -> Page[pb.Delivery]:
        reply = self._call(self.webhooks_stub.ListDeliveries, pb.ListDeliveriesRequest(
            conversation_id=conversation_id, page_size=page_size, page_token=page_token))
        return Page(list(reply.deliveries), reply.next_page_token)
