"""Bad input answers INVALID_ARGUMENT (or NOT_FOUND / FAILED_PRECONDITION / UNIMPLEMENTED) with a message
naming the problem; private callback targets are refused unless the operator allows them."""

from __future__ import annotations

import math

import grpc

from parley.v1 import control_pb2 as pb
from parley.v1.common_pb2 import AudioFrame
from tests.control.conftest import Control, Stubs, issue_key, make_config, png_photo

INVALID = grpc.StatusCode.INVALID_ARGUMENT
Z = "0" * 20


async def _err(coro) -> tuple[grpc.StatusCode, str]:
    try:
        result = coro
        if hasattr(result, "__aiter__"):
            async for _ in result:
                pass
        else:
            await result
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def persona(**fields) -> pb.CreatePersonaRequest:
    return pb.CreatePersonaRequest(persona=pb.Persona(**{"name": "ok", **fields}))


def layers(**kw) -> pb.PersonaLayers:
    return pb.PersonaLayers(**kw)


def pcm(data: bytes, sample_rate: int = 16000, channels: int = 1) -> AudioFrame:
    return AudioFrame(data=data, sample_rate=sample_rate, channels=channels)


def llm(**kw) -> pb.CreatePersonaRequest:
    return persona(layers=layers(llm=pb.LlmLayer(**kw)))


PERSONA_CASES = [
    (persona(name=""), "persona.name is required"),
    (persona(name="x" * 201), "persona.name is too long: 201 characters (at most 200)"),
    (persona(system_prompt="y" * 32_001), "persona.system_prompt is too long: 32001 characters (at most 32000)"),
    (persona(context="z" * 32_001), "persona.context is too long"),
    (persona(greeting="g" * 2_001), "persona.greeting is too long"),
    (persona(default_replica_id="r_zz"), "persona.default_replica_id 'r_zz' is not a replica id"),
    (persona(default_replica_id="r_" + Z), "persona.default_replica_id 'r_" + Z + "' names no replica"),
    (llm(backend="gpt"), "persona.layers.llm.backend 'gpt' must be one of"),
    (llm(base_url="ftp://x/v1"), "must be an http:// or https:// URL"),
    (llm(base_url="http://"), "has no host"),
    (llm(sampling=pb.LlmSampling(temperature=3)), "temperature must be within 0..2"),
    (llm(sampling=pb.LlmSampling(temperature=math.nan)), "temperature"),
    (llm(sampling=pb.LlmSampling(top_p=0)), "top_p must be within (0, 1]"),
    (llm(sampling=pb.LlmSampling(max_tokens=0)), "max_tokens must be within"),
    (llm(tools=[pb.LlmTool(name="bad name")]), "tools[0].name 'bad name' must match"),
    (llm(tools=[pb.LlmTool(name="a"), pb.LlmTool(name="a")]), "used twice"),
    (llm(tools=[pb.LlmTool(name="a", parameters_json="{")]), "is not valid JSON"),
    (llm(tools=[pb.LlmTool(name="a", parameters_json="[1]")]), "must be a JSON object"),
    (llm(tools=[pb.LlmTool(name=f"t{i}") for i in range(33)]), "at most 32 tools"),
    (llm(api_key="****"), "is the masked value"),
    (persona(layers=layers(tts=pb.TtsLayer(speed=5))),
     "persona.layers.tts.speed must be 0 (default) or within 0.5..2.0"),
    (persona(layers=layers(asr=pb.AsrLayer(language="english!!"))), "is not a language code"),
    (persona(layers=layers(turn_taking=pb.TurnTakingLayer(patience=7))), "patience is not a known level"),
]


async def test_bad_personas(stubs):
    for request, message in PERSONA_CASES:
        code, details = await _err(stubs.personas.CreatePersona(request, metadata=stubs.md))
        assert (code, message in details) == (INVALID, True), (message, details)
    assert not (await stubs.personas.ListPersonas(pb.ListPersonasRequest(), metadata=stubs.md)).personas


async def test_bad_ids_pages_and_masks(stubs):
    md = stubs.md
    p = await stubs.personas.CreatePersona(persona(), metadata=md)
    cases = [
        (stubs.personas.GetPersona(pb.GetPersonaRequest(), metadata=md), INVALID, "persona_id is required"),
        (stubs.personas.GetPersona(pb.GetPersonaRequest(persona_id="../etc"), metadata=md), INVALID,
         "persona_id '../etc' is not a persona id (expected 'p_' + 20 hex digits)"),
        (stubs.personas.GetPersona(pb.GetPersonaRequest(persona_id="p_" + Z), metadata=md),
         grpc.StatusCode.NOT_FOUND, f"persona 'p_{Z}' not found"),
        (stubs.replicas.GetReplica(pb.GetReplicaRequest(replica_id="c_" + Z), metadata=md), INVALID,
         "is not a replica id"),
        (stubs.replicas.GetJob(pb.GetJobRequest(job_id="j_" + Z), metadata=md), grpc.StatusCode.NOT_FOUND,
         "job"),
        (stubs.replicas.WatchJob(pb.GetJobRequest(job_id="nope"), metadata=md), INVALID, "is not a job id"),
        (stubs.conversations.GetConversation(pb.GetConversationRequest(conversation_id="c_" + Z), metadata=md),
         grpc.StatusCode.NOT_FOUND, "conversation"),
        (stubs.personas.ListPersonas(pb.ListPersonasRequest(page_size=-1), metadata=md), INVALID,
         "page_size must not be negative"),
        (stubs.personas.ListPersonas(pb.ListPersonasRequest(page_token="garbage!"), metadata=md), INVALID,
         "page_token is not a token this API returned"),
        (stubs.conversations.ListConversations(pb.ListConversationsRequest(status=99), metadata=md), INVALID,
         "status 99 is not a conversation status"),
        (stubs.personas.UpdatePersona(pb.UpdatePersonaRequest(persona=pb.Persona(persona_id=p.persona_id)),
                                      metadata=md), INVALID, "update_mask must name at least one field"),
        (stubs.personas.UpdatePersona(pb.UpdatePersonaRequest(persona=pb.Persona(persona_id=p.persona_id),
                                                              update_mask={"paths": ["persona_id"]}), metadata=md),
         INVALID, "update_mask path 'persona_id' is not an updatable Persona field"),
        (stubs.personas.UpdatePersona(pb.UpdatePersonaRequest(persona=pb.Persona(persona_id=p.persona_id, name=""),
                                                              update_mask={"paths": ["name"]}), metadata=md),
         INVALID, "persona.name is required"),
        (stubs.webhooks.ListDeliveries(pb.ListDeliveriesRequest(), metadata=md), INVALID,
         "conversation_id is required"),
    ]
    for call, code, message in cases:
        got, details = await _err(call)
        assert (got, message in details) == (code, True), (message, got, details)


async def test_bad_replicas(stubs):
    md = stubs.md
    cases = [
        (pb.CreateReplicaRequest(name="x"), INVALID, "photo is required"),
        (pb.CreateReplicaRequest(name="", photo=png_photo()), INVALID, "name is required"),
        (pb.CreateReplicaRequest(name="x", photo=b"hello, not an image"), INVALID, "photo must be a JPEG, PNG or WebP"),
        (pb.CreateReplicaRequest(name="x", photo=b"\xff\xd8\xff" + bytes(12 * 1024 * 1024)), INVALID,
         "photo is too large: 12582915 bytes (at most 12582912)"),
        (pb.CreateReplicaRequest(name="x", video=b"\x00\x00\x00\x18ftypmp42"), grpc.StatusCode.UNIMPLEMENTED,
         "not supported yet"),
    ]
    for request, code, message in cases:
        got, details = await _err(stubs.replicas.CreateReplica(request, metadata=md))
        assert (got, message in details) == (code, True), (message, got, details)


async def test_bad_conversations_and_interactions(stubs):
    md = stubs.md
    building = await stubs.replicas.CreateReplica(pb.CreateReplicaRequest(name="b", photo=png_photo()), metadata=md)
    conv = await stubs.conversations.CreateConversation(pb.CreateConversationRequest(), metadata=md)
    cid = conv.conversation_id
    create = [
        (dict(persona_id="p_" + Z), INVALID, f"persona_id 'p_{Z}' names no persona"),
        (dict(replica_id="r_" + Z), INVALID, f"replica_id 'r_{Z}' names no replica"),
        (dict(max_duration_s=-1), INVALID, "max_duration_s must not be negative (got -1)"),
        (dict(max_duration_s=math.inf), INVALID, "max_duration_s must be a finite number of seconds"),
        (dict(max_duration_s=1e9), INVALID, "max_duration_s is too long"),
        (dict(participant_join_timeout_s=-5), INVALID, "participant_join_timeout_s must not be negative"),
        (dict(participant_absent_timeout_s=math.nan), INVALID, "participant_absent_timeout_s must be a finite"),
        (dict(callback_url="not a url"), INVALID, "callback_url must not contain spaces"),
        (dict(callback_url="example.com/hook"), INVALID, "must be an http:// or https:// URL"),
        (dict(callback_url="javascript:alert(1)"), INVALID, "must be an http:// or https:// URL"),
        (dict(callback_url="http://"), INVALID, "has no host"),
        (dict(callback_url="http://user:pw@example.com/x"), INVALID, "must not carry credentials"),
        (dict(callback_url="http://example.com:99999/x"), INVALID, "is not a valid URL"),
        (dict(callback_url="https://nonexistent.invalid/hook"), INVALID, "does not resolve"),
        (dict(callback_url="https://x.com/" + "a" * 3000), INVALID, "callback_url is too long"),
        (dict(custom_greeting="h" * 2001), INVALID, "custom_greeting is too long"),
        (dict(conversational_context="c" * 32_001), INVALID, "conversational_context is too long"),
        (dict(name="n" * 201), INVALID, "name is too long"),
        (dict(replica_id=building.replica.replica_id), grpc.StatusCode.FAILED_PRECONDITION, "not ready"),
    ]
    for fields, code, message in create:
        got, details = await _err(stubs.conversations.CreateConversation(
            pb.CreateConversationRequest(**fields), metadata=md))
        assert (got, message in details) == (code, True), (fields, got, details)

    def act(**kw) -> pb.InteractRequest:
        return pb.InteractRequest(conversation_id=cid, **kw)

    interact = [
        (act(), "action is required"),
        (act(set_emotion=pb.SetEmotion(emotion="ecstatic")), "set_emotion.emotion 'ecstatic' is not one of: neutral"),
        (act(set_emotion=pb.SetEmotion(emotion="joy", intensity=2)), "intensity must be within 0..1"),
        (act(set_emotion=pb.SetEmotion(emotion="joy", intensity=math.nan)), "intensity must be within 0..1"),
        (act(echo=pb.Echo()), "echo needs exactly one of text or audio"),
        (act(echo=pb.Echo(text="hi", audio=pcm(b"\0\0"))), "exactly one"),
        (act(echo=pb.Echo(audio=pcm(b"\0\0", sample_rate=100))), "sample_rate must be within 8000..48000"),
        (act(echo=pb.Echo(audio=pcm(b"\0\0\0"))), "multiple of 2 bytes"),
        (act(echo=pb.Echo(audio=pcm(b"\0\0", channels=2))), "must be mono"),
        (act(echo=pb.Echo(audio=pcm(bytes(2 * 1024 * 1024 + 2)))), "too large"),
        (act(echo=pb.Echo(text="t" * 4001)), "echo.text is too long"),
        (act(respond=pb.Respond(text="  ")), "respond.text is required"),
        (act(append_context=pb.AppendContext()), "append_context.context is required"),
        (act(overwrite_context=pb.OverwriteContext(context="c" * 32_001)), "overwrite_context.context is too long"),
        (pb.InteractRequest(conversation_id="bogus", interrupt=pb.Interrupt()), "is not a conversation id"),
    ]
    for request, message in interact:
        got, details = await _err(stubs.conversations.Interact(request, metadata=md))
        assert (got, message in details) == (INVALID, True), (message, got, details)
    got, details = await _err(stubs.conversations.StreamEvents(
        pb.StreamEventsRequest(conversation_id=cid, after_event_id="abc"), metadata=md))
    assert got == INVALID and "after_event_id must be an event id" in details
    # nothing above reached the session host
    assert await stubs.conversations.Interact(act(interrupt=pb.Interrupt()), metadata=md)


PRIVATE = [
    "http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.1.2.3/", "http://192.168.0.1/",
    "http://172.16.5.4/", "http://169.254.169.254/latest/meta-data", "http://[::1]/", "http://0.0.0.0/",
    "http://100.64.0.1/", "http://[fe80::1]/", "http://[::ffff:127.0.0.1]/", "http://[fd00::1]/",
    "http://2130706433/", "http://0x7f000001/", "http://224.0.0.1/",
]


async def test_private_callbacks_refused_unless_allowed(redis_url, tmp_path):
    ctl = await Control(make_config(redis_url, tmp_path, webhooks={"allow_private_callbacks": False})).start()
    try:
        async with grpc.aio.insecure_channel(ctl.address) as channel:
            stubs = Stubs(channel, await issue_key(ctl.config, "acme"))
            for url in PRIVATE:
                got, details = await _err(stubs.conversations.CreateConversation(
                    pb.CreateConversationRequest(callback_url=url), metadata=stubs.md))
                assert got == INVALID, (url, got)
                assert "private, loopback or link-local" in details and "allow_private_callbacks" in details
            ok = await stubs.conversations.CreateConversation(
                pb.CreateConversationRequest(callback_url="https://93.184.216.34/hook"), metadata=stubs.md)
            assert ok.callback_url == "https://93.184.216.34/hook"
    finally:
        await ctl.stop()
