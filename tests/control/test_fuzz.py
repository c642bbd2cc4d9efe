"""Property-based fuzzing of every control RPC (hypothesis): at least 1 000 generated requests, each
answered with an expected status (never INTERNAL / UNKNOWN), and the service healthy afterwards."""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley import metrics
from parley.v1 import control_pb2 as pb
from parley.v1 import control_pb2_grpc as pb_grpc
from parley.v1.common_pb2 import AudioFrame
from services.control.server import build_app
from tests.control.conftest import issue_key, make_config, png_photo

EXPECTED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAUTHENTICATED}
COUNTS: collections.Counter[str] = collections.Counter()
CODES: collections.Counter[str] = collections.Counter()


class ThreadedControl:
    """The control service in its own thread and event loop, so the fuzzer can call it synchronously."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.address = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = build_app(self.config)
        async with app.running() as address:
            self.address = address
            self._ready.set()
            await self._stop.wait()

    def start(self) -> ThreadedControl:
        self._thread.start()
        assert self._ready.wait(30)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def fuzz_env(redis_url, tmp_path_factory):
    config = make_config(redis_url, tmp_path_factory.mktemp("fuzz"), jobs={"workers": 0})
    server = ThreadedControl(config).start()
    key = asyncio.run(issue_key(config, "fuzz"))
    channel = grpc.insecure_channel(server.address)
    md = (("authorization", f"Bearer {key}"),)
    stubs = {
        "personas": pb_grpc.PersonasStub(channel), "replicas": pb_grpc.ReplicasStub(channel),
        "conversations": pb_grpc.ConversationsStub(channel), "webhooks": pb_grpc.WebhooksStub(channel),
    }
    # a few real resources, so generated ids sometimes hit something
    persona = stubs["personas"].CreatePersona(pb.CreatePersonaRequest(persona=pb.Persona(name="seed")), metadata=md)
    replica = stubs["replicas"].CreateReplica(pb.CreateReplicaRequest(name="seed", photo=png_photo()), metadata=md)
    conv = stubs["conversations"].CreateConversation(pb.CreateConversationRequest(), metadata=md)
    ids = {"persona": persona.persona_id, "replica": replica.replica.replica_id, "job": replica.job.job_id,
           "conversation": conv.conversation_id}
    yield {"stubs": stubs, "md": md, "ids": ids, "channel": channel}
    channel.close()
    server.stop()


# -- strategies ---------------------------------------------------------------------------------------
texts = st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "\x00", "ok", "é" * 3, "a" * 250]))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -1.0, 0.5, 1e12]))
small_floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
ints = st.integers(min_value=-(2**31), max_value=2**31 - 1)
levels = st.one_of(st.sampled_from([0, 1, 2, 3]), st.integers(min_value=-5, max_value=1000))
urls = st.one_of(texts, st.sampled_from([
    "http://127.0.0.1:1/x", "https://93.184.216.34/hook", "http://[::1]/", "ftp://x", "http://", "https://a.invalid/",
    "http://example.com:99999/", "http://u:p@h/", "https://x.com/" + "p" * 3000, "http://10.0.0.1/"]))
json_texts = st.one_of(texts, st.sampled_from(['{"type": "object"}', "[]", "{", "null", '{"a": 1}']))


def id_strategy(kind: str, ids: dict[str, str]) -> st.SearchStrategy[str]:
    prefix = {"persona": "p_", "replica": "r_", "job": "j_", "conversation": "c_"}[kind]
    return st.one_of(st.just(ids[kind]), st.from_regex(rf"\A{prefix}[0-9a-f]{{20}}\Z"), texts,
                     st.sampled_from(list(ids.values())))


def sampling():
    return st.builds(lambda t, p, m, use: pb.LlmSampling(**{k: v for k, v in
                                                             {"temperature": t, "top_p": p, "max_tokens": m}.items()
                                                             if k in use}),
                     small_floats, small_floats, st.integers(min_value=0, max_value=2**32 - 1),
                     st.sets(st.sampled_from(["temperature", "top_p", "max_tokens"])))


def persona_msg(ids):
    tool = st.builds(pb.LlmTool, name=texts, description=texts, parameters_json=json_texts)
    llm = st.builds(pb.LlmLayer, backend=st.one_of(texts, st.sampled_from(["openai", "llamacpp"])),
                    base_url=urls, model=texts, api_key=st.one_of(texts, st.just("****")), sampling=sampling(),
                    tools=st.lists(tool, max_size=3))
    layer = st.builds(pb.PersonaLayers, llm=llm, tts=st.builds(pb.TtsLayer, voice=texts, speed=small_floats),
                      asr=st.builds(pb.AsrLayer, model=texts, language=texts),
                      turn_taking=st.builds(pb.TurnTakingLayer, patience=levels, interruptibility=levels),
                      perception=st.builds(pb.PerceptionLayer, enabled=st.booleans()))
    return st.builds(pb.Persona, persona_id=id_strategy("persona", ids), name=texts, system_prompt=texts,
                     context=texts, default_replica_id=st.one_of(st.just(""), id_strategy("replica", ids)),
                     greeting=texts, layers=layer)


def plausible_persona(ids):
    """Mostly valid personas, so the success paths are fuzzed too."""
    words = st.text(alphabet="abcdefghij XYZ", min_size=1, max_size=30).filter(str.strip)
    return st.builds(pb.Persona, name=words, system_prompt=st.text(max_size=200), greeting=words,
                     default_replica_id=st.sampled_from(["", ids["replica"]]),
                     layers=st.builds(pb.PersonaLayers,
                                      tts=st.builds(pb.TtsLayer, speed=st.sampled_from([0, 0.5, 1.5])),
                                      llm=st.builds(pb.LlmLayer, model=words, sampling=sampling())))


MASK_PATHS = ["name", "system_prompt", "layers", "layers.llm.model", "layers.tts", "layers.llm.sampling.top_p",
              "persona_id", "layers.nope", "", "name.first", "default_replica_id"]


def audio():
    return st.builds(AudioFrame, data=st.binary(max_size=64), sample_rate=st.integers(min_value=0, max_value=96000),
                     channels=st.integers(min_value=0, max_value=3), encoding=st.integers(min_value=0, max_value=5))


def interaction(ids):
    cid = id_strategy("conversation", ids)
    actions = st.one_of(
        st.builds(lambda t, a: {"echo": pb.Echo(text=t, audio=a)}, texts, st.one_of(st.none(), audio())),
        st.builds(lambda t: {"respond": pb.Respond(text=t)}, texts),
        st.just({"interrupt": pb.Interrupt()}),
        st.builds(lambda t: {"overwrite_context": pb.OverwriteContext(context=t)}, texts),
        st.builds(lambda t: {"append_context": pb.AppendContext(context=t)}, texts),
        st.builds(lambda e, i: {"set_emotion": pb.SetEmotion(emotion=e, intensity=i)},
                  st.one_of(texts, st.sampled_from(["joy", "happy", "anger", "SURPRISE"])), small_floats),
        st.just({}),
    )
    return st.builds(lambda c, a: pb.InteractRequest(conversation_id=c, **{k: v for k, v in a.items()
                                                                           if v is not None}), cid, actions)


def requests(ids):
    page = dict(page_size=st.one_of(ints, st.integers(min_value=-2, max_value=200)), page_token=texts)
    photo = st.one_of(st.binary(max_size=64), st.binary(max_size=64).map(lambda b: b"\x89PNG\r\n\x1a\n" + b))
    mask = st.lists(st.sampled_from(MASK_PATHS), max_size=3).map(lambda p: {"paths": p})
    return st.one_of(
        st.tuples(st.just("personas.CreatePersona"), st.builds(pb.CreatePersonaRequest, persona=persona_msg(ids))),
        st.tuples(st.just("personas.CreatePersona"),
                  st.builds(pb.CreatePersonaRequest, persona=plausible_persona(ids))),
        st.tuples(st.just("personas.UpdatePersona"), st.builds(
            pb.UpdatePersonaRequest, persona=plausible_persona(ids).map(lambda p: _with_id(p, ids["persona"])),
            update_mask=st.lists(st.sampled_from(["name", "greeting", "layers.tts", "layers.llm.sampling.top_p"]),
                                 min_size=1, max_size=3).map(lambda p: {"paths": p}))),
        st.tuples(st.just("conversations.CreateConversation"), st.builds(
            pb.CreateConversationRequest, persona_id=st.sampled_from(["", ids["persona"]]),
            name=st.text(max_size=20), max_duration_s=st.floats(min_value=0, max_value=1000),
            callback_url=st.sampled_from(["", "http://127.0.0.1:9/hook"]))),
        st.tuples(st.just("personas.GetPersona"),
                  st.builds(pb.GetPersonaRequest, persona_id=id_strategy("persona", ids))),
        st.tuples(st.just("personas.ListPersonas"), st.builds(pb.ListPersonasRequest, **page)),
        st.tuples(st.just("personas.UpdatePersona"),
                  st.builds(pb.UpdatePersonaRequest, persona=persona_msg(ids), update_mask=mask)),
        st.tuples(st.just("personas.DeletePersona"),
                  st.builds(pb.DeletePersonaRequest, persona_id=id_strategy("persona", ids))),
        st.tuples(st.just("replicas.CreateReplica"), st.builds(pb.CreateReplicaRequest, name=texts, photo=photo)),
        st.tuples(st.just("replicas.GetReplica"),
                  st.builds(pb.GetReplicaRequest, replica_id=id_strategy("replica", ids))),
        st.tuples(st.just("replicas.ListReplicas"), st.builds(pb.ListReplicasRequest, **page)),
        st.tuples(st.just("replicas.GetJob"), st.builds(pb.GetJobRequest, job_id=id_strategy("job", ids))),
        st.tuples(st.just("conversations.CreateConversation"), st.builds(
            pb.CreateConversationRequest, persona_id=st.one_of(st.just(""), id_strategy("persona", ids)),
            replica_id=st.one_of(st.just(""), id_strategy("replica", ids)), name=texts, callback_url=urls,
            max_duration_s=floats, participant_join_timeout_s=floats, participant_absent_timeout_s=floats,
            custom_greeting=texts, conversational_context=texts)),
        st.tuples(st.just("conversations.GetConversation"),
                  st.builds(pb.GetConversationRequest, conversation_id=id_strategy("conversation", ids))),
        st.tuples(st.just("conversations.ListConversations"),
                  st.builds(pb.ListConversationsRequest, status=st.integers(min_value=-3, max_value=10), **page)),
        st.tuples(st.just("conversations.Interact"), interaction(ids)),
        st.tuples(st.just("conversations.StreamEvents"), st.builds(
            pb.StreamEventsRequest, conversation_id=id_strategy("conversation", ids),
            after_event_id=st.one_of(texts, st.just("$"), st.from_regex(r"\A\d{1,14}-\d\Z")), follow=st.just(False))),
        st.tuples(st.just("webhooks.ListDeliveries"), st.builds(
            pb.ListDeliveriesRequest, conversation_id=id_strategy("conversation", ids), **page)),
        st.tuples(st.just("webhooks.GetWebhookSecret"), st.just(pb.GetWebhookSecretRequest())),
        st.tuples(st.just("conversations.EndConversation"),
                  st.builds(pb.EndConversationRequest, conversation_id=id_strategy("conversation", ids))),
    )


def _with_id(persona: pb.Persona, persona_id: str) -> pb.Persona:
    persona.persona_id = persona_id
    return persona


def call(env, name: str, request: Any, metadata) -> grpc.StatusCode:
    service, method = name.split(".")
    fn = getattr(env["stubs"][service], method)
    try:
        result = fn(request, metadata=metadata, timeout=10)
        if name.endswith("StreamEvents"):
            for _ in result:
                pass
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_fuzz_every_rpc(fuzz_env, redis_url):
    ids = fuzz_env["ids"]
    bad_keys = st.sampled_from([(), (("authorization", "Bearer x"),), (("x-api-key", "pk_0_0"),),
                                (("authorization", ""),)])

    @settings(max_examples=1100, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(requests(ids))
    def run(named):
        name, request = named
        code = call(fuzz_env, name, request, fuzz_env["md"])
        COUNTS[name] += 1
        CODES[code.name] += 1
        assert code in EXPECTED, (name, code, request)

    @settings(max_examples=60, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(requests(ids), bad_keys)
    def run_unauthenticated(named, metadata):
        name, request = named
        code = call(fuzz_env, name, request, metadata)
        COUNTS[name] += 1
        CODES[code.name] += 1
        assert code == grpc.StatusCode.UNAUTHENTICATED, (name, code)

    run()
    run_unauthenticated()
    total = sum(COUNTS.values())
    print(f"\nfuzz: {total} requests over {len(COUNTS)} RPCs; codes {dict(CODES)}")
    assert total >= 1000
    assert len(COUNTS) >= 17
    # no handler failed inside (the unary wrapper counts codes per method in-process)
    internal = sum(s.value for m in metrics.STREAMS_TOTAL.collect() for s in m.samples
                   if s.labels.get("code") in ("INTERNAL", "UNKNOWN") and s.labels.get("service") == "control")
    assert internal == 0
    # still healthy and still working
    health = health_pb2_grpc.HealthStub(fuzz_env["channel"]).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    again = fuzz_env["stubs"]["conversations"].CreateConversation(pb.CreateConversationRequest(),
                                                                  metadata=fuzz_env["md"], timeout=5)
    assert again.status == pb.CONVERSATION_STATUS_WAITING
