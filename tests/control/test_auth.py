"""API keys on every call, tenant isolation (others' ids answer NOT_FOUND), signed join tokens."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parley.v1 import control_pb2 as pb
from services.control.auth import InvalidJoinToken, KeyStore, sign_join_token, verify_join_token
from tests.control.conftest import Stubs, issue_key, png_photo, wait_for


def calls(stubs: Stubs):
    """One representative call per RPC of every control service (ids need not exist)."""
    fake = "0" * 20
    return [
        (stubs.personas.CreatePersona, pb.CreatePersonaRequest(persona=pb.Persona(name="x"))),
        (stubs.personas.GetPersona, pb.GetPersonaRequest(persona_id="p_" + fake)),
        (stubs.personas.ListPersonas, pb.ListPersonasRequest()),
        (stubs.personas.UpdatePersona, pb.UpdatePersonaRequest()),
        (stubs.personas.DeletePersona, pb.DeletePersonaRequest(persona_id="p_" + fake)),
        (stubs.replicas.CreateReplica, pb.CreateReplicaRequest(name="x", photo=png_photo())),
        (stubs.replicas.GetReplica, pb.GetReplicaRequest(replica_id="r_" + fake)),
        (stubs.replicas.ListReplicas, pb.ListReplicasRequest()),
        (stubs.replicas.DeleteReplica, pb.DeleteReplicaRequest(replica_id="r_" + fake)),
        (stubs.replicas.GetJob, pb.GetJobRequest(job_id="j_" + fake)),
        (stubs.conversations.CreateConversation, pb.CreateConversationRequest()),
        (stubs.conversations.GetConversation, pb.GetConversationRequest(conversation_id="c_" + fake)),
        (stubs.conversations.ListConversations, pb.ListConversationsRequest()),
        (stubs.conversations.EndConversation, pb.EndConversationRequest(conversation_id="c_" + fake)),
        (stubs.conversations.Interact, pb.InteractRequest(conversation_id="c_" + fake)),
        (stubs.webhooks.GetWebhookSecret, pb.GetWebhookSecretRequest()),
        (stubs.webhooks.RotateWebhookSecret, pb.GetWebhookSecretRequest()),
        (stubs.webhooks.ListDeliveries, pb.ListDeliveriesRequest(conversation_id="c_" + fake)),
    ]


async def _code(call) -> tuple[grpc.StatusCode, str]:
    try:
        result = call()
        if hasattr(result, "__aiter__"):
            async for _ in result:
                pass
        else:
            await result
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("metadata,message", [
    ((), "missing API key"),
    ((("authorization", "Bearer pk_000000000000_" + "A" * 43),), "invalid API key"),
    ((("authorization", "Bearer not-a-key"),), "invalid API key"),
    ((("authorization", "Basic dXNlcjpwdw=="),), "missing API key"),
    ((("x-api-key", "pk_123"),), "invalid API key"),
])
async def test_every_rpc_needs_a_valid_key(control, stubs, metadata, message):
    for method, request in calls(stubs):
        code, details = await _code(lambda m=method, r=request: m(r, metadata=metadata))
        assert code == grpc.StatusCode.UNAUTHENTICATED, (method, code, details)
        assert message in details
    streaming = ((stubs.replicas.WatchJob, pb.GetJobRequest(job_id="j_" + "0" * 20)),
                 (stubs.conversations.StreamEvents, pb.StreamEventsRequest(conversation_id="c_" + "0" * 20)))
    for method, request in streaming:
        code, details = await _code(lambda m=method, r=request: m(r, metadata=metadata))
        assert code == grpc.StatusCode.UNAUTHENTICATED and message in details


async def test_key_headers_revocation_and_health_without_key(control, stubs, redis_client):
    ok = pb.ListPersonasRequest()
    assert (await _code(lambda: stubs.personas.ListPersonas(ok, metadata=(("x-api-key", stubs.key),))))[0] \
        == grpc.StatusCode.OK
    assert (await _code(lambda: stubs.personas.ListPersonas(ok, metadata=(("authorization", f"bearer {stubs.key}"),
                                                                          ))))[0] == grpc.StatusCode.OK
    keys = KeyStore(redis_client, control.config.key_prefix)
    issued = await keys.create("acme", name="to revoke")
    assert await keys.revoke(issued.key_id)
    code, details = await _code(lambda: stubs.personas.ListPersonas(ok, metadata=(("x-api-key", issued.key),)))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "revoked" in details
    stored = await redis_client.hgetall(keys.key_key(issued.key_id))
    assert issued.key not in str(stored) and stored["sha256"] and stored["tenant"] == "acme"  # only the hash
    health = await health_pb2_grpc.HealthStub(stubs.channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_other_tenants_ids_are_not_found(control, stubs):
    mine = stubs
    theirs = Stubs(stubs.channel, await issue_key(control.config, "globex"))
    persona = await mine.personas.CreatePersona(pb.CreatePersonaRequest(persona=pb.Persona(name="Mine")),
                                                metadata=mine.md)
    created = await mine.replicas.CreateReplica(pb.CreateReplicaRequest(name="Mine", photo=png_photo()),
                                                metadata=mine.md)
    conv = await mine.conversations.CreateConversation(pb.CreateConversationRequest(persona_id=persona.persona_id),
                                                       metadata=mine.md)
    ids = {"persona": persona.persona_id, "replica": created.replica.replica_id, "job": created.job.job_id,
           "conversation": conv.conversation_id}
    unknown = {k: v[:2] + "f" * 20 for k, v in ids.items()}

    def probes(x: dict[str, str]):
        return [
            lambda s: s.personas.GetPersona(pb.GetPersonaRequest(persona_id=x["persona"]), metadata=s.md),
            lambda s: s.personas.UpdatePersona(pb.UpdatePersonaRequest(
                persona=pb.Persona(persona_id=x["persona"], name="stolen"),
                update_mask={"paths": ["name"]}), metadata=s.md),
            lambda s: s.personas.DeletePersona(pb.DeletePersonaRequest(persona_id=x["persona"]), metadata=s.md),
            lambda s: s.replicas.GetReplica(pb.GetReplicaRequest(replica_id=x["replica"]), metadata=s.md),
            lambda s: s.replicas.DeleteReplica(pb.DeleteReplicaRequest(replica_id=x["replica"]), metadata=s.md),
            lambda s: s.replicas.GetJob(pb.GetJobRequest(job_id=x["job"]), metadata=s.md),
            lambda s: s.replicas.WatchJob(pb.GetJobRequest(job_id=x["job"]), metadata=s.md),
            lambda s: s.conversations.GetConversation(
                pb.GetConversationRequest(conversation_id=x["conversation"]), metadata=s.md),
            lambda s: s.conversations.EndConversation(
                pb.EndConversationRequest(conversation_id=x["conversation"]), metadata=s.md),
            lambda s: s.conversations.Interact(pb.InteractRequest(
                conversation_id=x["conversation"], interrupt=pb.Interrupt()), metadata=s.md),
            lambda s: s.conversations.StreamEvents(
                pb.StreamEventsRequest(conversation_id=x["conversation"]), metadata=s.md),
            lambda s: s.webhooks.ListDeliveries(
                pb.ListDeliveriesRequest(conversation_id=x["conversation"]), metadata=s.md),
        ]

    for probe, probe_unknown in zip(probes(ids), probes(unknown), strict=True):
        code, details = await _code(lambda p=probe: p(theirs))
        code_u, details_u = await _code(lambda p=probe_unknown: p(theirs))
        assert code == code_u == grpc.StatusCode.NOT_FOUND, (code, details)
        # same answer as for an id that never existed, apart from the id itself
        assert details.split("'")[0] == details_u.split("'")[0]

    # referencing another tenant's persona / replica in a request body: same as an unknown one
    code, details = await _code(lambda: theirs.conversations.CreateConversation(
        pb.CreateConversationRequest(persona_id=ids["persona"]), metadata=theirs.md))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "names no persona" in details
    code, details = await _code(lambda: theirs.personas.CreatePersona(pb.CreatePersonaRequest(
        persona=pb.Persona(name="x", default_replica_id=ids["replica"])), metadata=theirs.md))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "names no replica" in details

    # their lists are empty; mine are intact
    assert not (await theirs.personas.ListPersonas(pb.ListPersonasRequest(), metadata=theirs.md)).personas
    assert not (await theirs.replicas.ListReplicas(pb.ListReplicasRequest(), metadata=theirs.md)).replicas
    assert not (await theirs.conversations.ListConversations(pb.ListConversationsRequest(),
                                                             metadata=theirs.md)).conversations
    got = await mine.personas.GetPersona(pb.GetPersonaRequest(persona_id=ids["persona"]), metadata=mine.md)
    assert got.name == "Mine"
    conv_now = await mine.conversations.GetConversation(
        pb.GetConversationRequest(conversation_id=ids["conversation"]), metadata=mine.md)
    assert conv_now.status == pb.CONVERSATION_STATUS_WAITING
    mine_secret = await mine.webhooks.GetWebhookSecret(pb.GetWebhookSecretRequest(), metadata=mine.md)
    their_secret = await theirs.webhooks.GetWebhookSecret(pb.GetWebhookSecretRequest(), metadata=theirs.md)
    assert mine_secret.secret != their_secret.secret
    await wait_for(lambda: _job_done(mine, ids["job"]))


async def _job_done(stubs, job_id):
    job = await stubs.replicas.GetJob(pb.GetJobRequest(job_id=job_id), metadata=stubs.md)
    return job.status in (pb.JOB_STATUS_SUCCEEDED, pb.JOB_STATUS_FAILED)


def test_join_tokens_are_signed_bound_and_expire():
    secret = "s3cret"
    cid = "c_" + "a" * 20
    token = sign_join_token(secret, cid, time.time() + 60)
    assert verify_join_token(token, cid, secret).conversation_id == cid
    payload, signature = token.split(".")
    forged = sign_join_token(secret, "c_" + "b" * 20, time.time() + 60).split(".")[0] + "." + signature
    cases = {
        "another conversation": (token, "c_" + "b" * 20, secret),
        "expired": (sign_join_token(secret, cid, time.time() - 1), cid, secret),
        "signature does not match": (token, cid, "other-secret"),
        "signature does not match ": (forged, "c_" + "b" * 20, secret),
        "malformed": ("garbage", cid, secret),
        "malformed ": ("", cid, secret),
        "signature does not match  ": (payload + ".AAAA", cid, secret),
    }
    for expected, (tok, conv, key) in cases.items():
        with pytest.raises(InvalidJoinToken, match=expected.strip()):
            verify_join_token(tok, conv, key)
    with pytest.raises(InvalidJoinToken, match="expired"):
        verify_join_token(token, cid, secret, now=time.time() + 61)
