"""Persona updates (field masks, write-only API key), pagination, `python -m services.control` as a
process, and API latency on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from parley.client import ParleyClient
from parley.redis_server import free_port
from parley.v1 import control_pb2 as pb
from services.control import streams
from tests.control.conftest import issue_key

ROOT = Path(__file__).resolve().parents[2]


async def test_update_masks_and_write_only_api_key(stubs, redis_client, control):
    md = stubs.md
    created = await stubs.personas.CreatePersona(pb.CreatePersonaRequest(persona=pb.Persona(
        name="A", system_prompt="one", layers=pb.PersonaLayers(
            llm=pb.LlmLayer(backend="openai", model="m1", api_key="sk-1", tools=[pb.LlmTool(name="t1")]),
            tts=pb.TtsLayer(voice="v1", speed=1.2)))), metadata=md)
    pid = created.persona_id

    async def update(persona: pb.Persona, *paths: str) -> pb.Persona:
        persona.persona_id = pid
        return await stubs.personas.UpdatePersona(pb.UpdatePersonaRequest(persona=persona,
                                                                          update_mask={"paths": list(paths)}),
                                                  metadata=md)

    got = await update(pb.Persona(name="B", system_prompt="ignored"), "name")
    assert (got.name, got.system_prompt) == ("B", "one")
    got = await update(pb.Persona(layers=pb.PersonaLayers(tts=pb.TtsLayer(voice="v2"))), "layers.tts.voice")
    assert got.layers.tts.voice == "v2" and got.layers.tts.speed == pytest.approx(1.2)
    got = await update(pb.Persona(layers=pb.PersonaLayers(llm=pb.LlmLayer(tools=[pb.LlmTool(name="t2")]))),
                       "layers.llm.tools")
    assert [t.name for t in got.layers.llm.tools] == ["t2"] and got.layers.llm.model == "m1"
    # a fetched persona sent back whole keeps its real key (the API shows "****")
    fetched = await stubs.personas.GetPersona(pb.GetPersonaRequest(persona_id=pid), metadata=md)
    assert fetched.layers.llm.api_key == "****"
    fetched.greeting = "hey"
    got = await update(fetched, "greeting", "layers")
    assert got.greeting == "hey" and got.updated_at > created.updated_at
    conv = await stubs.conversations.CreateConversation(pb.CreateConversationRequest(persona_id=pid), metadata=md)
    spec = json.loads(await redis_client.hget(streams.conversation_key(conv.conversation_id,
                                                                       control.config.key_prefix), "spec"))
    assert spec["layers"]["llm"]["api_key"] == "sk-1"  # the session host gets the real one
    got = await update(pb.Persona(layers=pb.PersonaLayers(llm=pb.LlmLayer(api_key="sk-2"))), "layers.llm.api_key")
    assert got.layers.llm.api_key == "****"


async def test_pagination_and_status_filter(stubs):
    md = stubs.md
    names = [f"p{i}" for i in range(7)]
    for name in names:
        await stubs.personas.CreatePersona(pb.CreatePersonaRequest(persona=pb.Persona(name=name)), metadata=md)
    pages, token = [], ""
    while True:
        page = await stubs.personas.ListPersonas(pb.ListPersonasRequest(page_size=3, page_token=token), metadata=md)
        pages.append([p.name for p in page.personas])
        if not (token := page.next_page_token):
            break
    assert pages == [["p6", "p5", "p4"], ["p3", "p2", "p1"], ["p0"]]  # newest first, no overlap
    a = await stubs.conversations.CreateConversation(pb.CreateConversationRequest(name="a"), metadata=md)
    await stubs.conversations.CreateConversation(pb.CreateConversationRequest(name="b"), metadata=md)
    await stubs.conversations.EndConversation(pb.EndConversationRequest(conversation_id=a.conversation_id),
                                              metadata=md)

    async def names_with(status: int) -> list[str]:
        reply = await stubs.conversations.ListConversations(pb.ListConversationsRequest(status=status), metadata=md)
        return [c.name for c in reply.conversations]

    assert await names_with(pb.CONVERSATION_STATUS_ENDED) == ["a"]
    assert await names_with(pb.CONVERSATION_STATUS_WAITING) == ["b"]
    assert await names_with(0) == ["b", "a"]
    huge = await stubs.personas.ListPersonas(pb.ListPersonasRequest(page_size=10_000), metadata=md)
    assert len(huge.personas) == 7  # capped at limits.max_page_size, not an error


def test_main_process_serves_and_drains(redis_url, tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "libs")]),
           "PARLEY_CONTROL__SERVER__REDIS_URL": redis_url, "PARLEY_CONTROL__SERVER__PORT": str(port),
           "PARLEY_CONTROL__KEY_PREFIX": "main:", "PARLEY_CONTROL__JOBS__REPLICA_DIR": str(tmp_path)}
    log = open(tmp_path / "control.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "services.control"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=log, text=True)
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready == {"event": "ready", "service": "control", "port": port, "metrics_port": ready["metrics_port"]}
        key = asyncio.run(issue_key(_cfg(redis_url, "main:"), "acme"))
        with ParleyClient(f"127.0.0.1:{port}", api_key=key) as parley:
            assert parley.create_persona("P").persona_id.startswith("p_")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        log.close()
        assert code == 0, (tmp_path / "control.log").read_text()[-3000:]


def _cfg(redis_url: str, prefix: str):
    from services.control.config import ControlServiceConfig

    return ControlServiceConfig.model_validate({"server": {"redis_url": redis_url}, "key_prefix": prefix})


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def test_api_latency(stubs):
    """p50 / p95 of typical calls over loopback gRPC with the real Redis (printed for the report)."""
    md = stubs.md
    persona = await stubs.personas.CreatePersona(pb.CreatePersonaRequest(persona=pb.Persona(name="L")), metadata=md)
    conv = await stubs.conversations.CreateConversation(pb.CreateConversationRequest(), metadata=md)
    calls = {
        "GetPersona": lambda: stubs.personas.GetPersona(pb.GetPersonaRequest(persona_id=persona.persona_id),
                                                        metadata=md),
        "CreatePersona": lambda: stubs.personas.CreatePersona(pb.CreatePersonaRequest(persona=pb.Persona(name="x")),
                                                              metadata=md),
        "CreateConversation": lambda: stubs.conversations.CreateConversation(
            pb.CreateConversationRequest(persona_id=persona.persona_id), metadata=md),
        "Interact(respond)": lambda: stubs.conversations.Interact(pb.InteractRequest(
            conversation_id=conv.conversation_id, respond=pb.Respond(text="hello")), metadata=md),
        "ListConversations": lambda: stubs.conversations.ListConversations(pb.ListConversationsRequest(page_size=50),
                                                                           metadata=md),
    }
    report = {}
    for name, call in calls.items():
        for _ in range(10):
            await call()
        samples = []
        for _ in range(100):
            t0 = time.perf_counter()
            await call()
            samples.append((time.perf_counter() - t0) * 1000)
        report[name] = (statistics.median(samples), _pct(samples, 0.95))
    print("\nAPI latency on loopback (ms, p50 / p95): " + ", ".join(
        f"{k} {a:.1f} / {b:.1f}" for k, (a, b) in report.items()))
    assert all(p50 < 50 for p50, _ in report.values()), report
    with pytest.raises(grpc.aio.AioRpcError):
        await stubs.personas.GetPersona(pb.GetPersonaRequest(persona_id="bad"), metadata=md)
