"""The Python SDK (sync and async) and the `parley` control subcommands against a live control service."""

from __future__ import annotations

import argparse
import asyncio
import json

import pytest

from parley.client import (
    AsyncParleyClient,
    AuthenticationError,
    InvalidArgumentError,
    JobFailed,
    NotFoundError,
    ParleyClient,
    to_dict,
)
from parley.v1 import control_pb2 as pb
from services.cli.control_commands import add_control_commands
from services.control import streams
from tests.control.conftest import Control, make_config, png_photo


def test_update_mask_paths_from_kwargs():
    from parley.client._common import update_request

    request = update_request("p_" + "0" * 20, {"name": "N", "layers": {"llm": {"model": "m", "sampling": {
        "top_p": 0.5}}, "tts": {"speed": 1.2}, "perception": {"enabled": True}}})
    assert list(request.update_mask.paths) == ["name", "layers.llm.model", "layers.llm.sampling.top_p",
                                               "layers.tts.speed", "layers.perception.enabled"]
    assert request.persona.layers.llm.sampling.top_p == pytest.approx(0.5)


async def test_sync_sdk(control, api_key, redis_client):
    prefix = control.config.key_prefix

    def work() -> dict:
        out: dict = {}
        with ParleyClient(control.address, api_key=api_key) as parley:
            persona = parley.create_persona("Tutor", system_prompt="Teach.", greeting="Hi",
                                            layers={"llm": {"model": "qwen", "sampling": {"temperature": 0.2}},
                                                    "tts": {"speed": 1.1}})
            updated = parley.update_persona(persona.persona_id, greeting="Hello",
                                            layers={"tts": {"voice": "af_heart"}})
            out["updated"] = updated
            for i in range(4):
                parley.create_persona(f"P{i}")
            out["all"] = [p.name for p in parley.iter_personas(page_size=2)]
            fractions: list[tuple[float, str]] = []
            replica = parley.create_replica_and_wait(
                "Anna", png_photo(), progress=lambda f, m: fractions.append((f, m)), timeout=60)
            out["replica"], out["fractions"] = replica, fractions
            conv = parley.create_conversation(persona.persona_id, replica.replica_id, name="s",
                                              participant_join_timeout_s=30)
            cid = conv.conversation_id
            out["ids"] = [parley.echo(cid, "Exactly this."), parley.echo(cid, audio=b"\0\0" * 100, sample_rate=8000),
                          parley.respond(cid, "hi"), parley.interrupt(cid), parley.overwrite_context(cid, "A"),
                          parley.append_context(cid, "B"), parley.set_emotion(cid, "surprise", 0.5)]
            out["waiting"] = [c.conversation_id for c in parley.list_conversations("waiting").items]
            ended = parley.end_conversation(cid)
            out["ended"] = ended
            out["events"] = [e.event_type for e in parley.events(cid, follow=False)]
            out["deliveries"] = parley.list_deliveries(cid).items
            with pytest.raises(NotFoundError):
                parley.get_persona("p_" + "f" * 20)
            with pytest.raises(InvalidArgumentError, match="emotion"):
                parley.set_emotion(cid, "meh")
            parley.delete_persona(persona.persona_id)
            with pytest.raises(NotFoundError):
                parley.get_persona(persona.persona_id)
            out["cid"] = cid
        with ParleyClient(control.address, api_key="pk_000000000000_" + "x" * 43) as bad, \
                pytest.raises(AuthenticationError):
            bad.list_personas()
        return out

    out = await asyncio.to_thread(work)
    updated = out["updated"]
    assert updated.greeting == "Hello" and updated.layers.tts.voice == "af_heart"
    assert updated.layers.tts.speed == pytest.approx(1.1) and updated.layers.llm.model == "qwen"  # untouched
    assert sorted(out["all"]) == ["P0", "P1", "P2", "P3", "Tutor"]
    assert out["replica"].status == pb.REPLICA_STATUS_READY
    fractions = [f for f, _ in out["fractions"]]
    assert fractions[-1] == 1.0 and fractions == sorted(fractions) and len(out["fractions"]) >= 4
    entries = await redis_client.xrange(streams.interactions_key(out["cid"], prefix))
    kinds = [streams.decode_entry(f)[0] for _, f in entries]
    assert kinds == ["echo", "echo", "respond", "interrupt", "overwrite_context", "append_context", "set_emotion",
                     "end"]
    assert out["cid"] in out["waiting"]
    assert out["ended"].status == pb.CONVERSATION_STATUS_ENDED
    assert out["events"] == [streams.SHUTDOWN, streams.TRANSCRIPTION_READY]


async def test_async_sdk_and_failed_build(redis_url, tmp_path):
    ctl = await Control(make_config(redis_url, tmp_path, jobs={"builder": "tests.control.fake_builder:failing_build"})
                        ).start()
    try:
        from tests.control.conftest import issue_key

        async with AsyncParleyClient(ctl.address, api_key=await issue_key(ctl.config, "acme")) as parley:
            seen: list[tuple[float, str]] = []
            with pytest.raises(JobFailed, match="no face found") as failed:
                await parley.create_replica_and_wait("Bad", png_photo(), progress=lambda f, m: seen.append((f, m)))
            assert failed.value.job.status == pb.JOB_STATUS_FAILED
            replica = await parley.get_replica(failed.value.job.resource_id)
            assert replica.status == pb.REPLICA_STATUS_FAILED and "no face found" in replica.error
            assert [r.replica_id for r in (await parley.list_replicas()).items] == [replica.replica_id]
            await parley.delete_replica(replica.replica_id)
            with pytest.raises(NotFoundError):
                await parley.get_replica(replica.replica_id)
            persona = await parley.create_persona("A", layers=pb.PersonaLayers(perception=pb.PerceptionLayer(
                enabled=True)))
            assert (await parley.get_persona(persona.persona_id)).layers.perception.enabled
            conv = await parley.create_conversation(persona.persona_id)
            await parley.respond(conv.conversation_id, "hello")

            async def follow() -> list[str]:
                return [e.event_type async for e in parley.events(conv.conversation_id, follow=True)]

            follower = asyncio.create_task(follow())
            await asyncio.sleep(0.3)
            await parley.end_conversation(conv.conversation_id)
            assert await asyncio.wait_for(follower, 10) == [streams.SHUTDOWN, streams.TRANSCRIPTION_READY]
            assert to_dict(conv)["status"] == "CONVERSATION_STATUS_WAITING"
    finally:
        await ctl.stop()


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="parley")
    parser.add_argument("--config", default=None)
    add_control_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


async def test_cli(control, capsys, tmp_path):
    cfg = control.config
    redis = ["--redis-url", cfg.server.redis_url, "--prefix", cfg.key_prefix]

    async def run(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(_cli, list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, err = await run("admin", "keys", "create", "--tenant", "acme", "--json", *redis)
    assert code == 0, err
    issued = json.loads(out)
    key = issued["api_key"]
    assert key.startswith("pk_") and issued["webhook_secret"].startswith("whsec_")
    code, out, _ = await run("admin", "keys", "list", "--tenant", "acme", *redis)
    assert issued["key_id"] in out and key not in out
    api = ["--address", control.address, "--api-key", key]

    code, out, err = await run("personas", "create", "--name", "Tutor", "--system-prompt", "Teach French.",
                               "--greeting", "Bonjour", "--layers", '{"tts": {"speed": 1.2}}', *api)
    assert code == 0, err
    persona = json.loads(out)
    assert persona["layers"]["tts"]["speed"] == pytest.approx(1.2)
    code, out, _ = await run("personas", "list", *api)
    assert persona["persona_id"] in out and "Tutor" in out
    code, out, _ = await run("personas", "get", persona["persona_id"], *api)
    assert json.loads(out)["system_prompt"] == "Teach French."

    photo = tmp_path / "face.png"
    photo.write_bytes(png_photo())
    code, out, err = await run("replicas", "create", "--name", "Anna", "--photo", str(photo), *api)
    assert code == 0, err
    replica = json.loads(out)
    assert replica["status"] == "REPLICA_STATUS_READY" and "100.0%" in err
    code, out, _ = await run("replicas", "list", *api)
    assert "ready" in out

    code, out, err = await run("conversations", "create", "--persona", persona["persona_id"], "--replica",
                               replica["replica_id"], "--name", "cli", "--max-duration", "120", *api)
    assert code == 0, err
    conv = json.loads(out)
    assert "/c/" + conv["conversation_id"] + "?t=" in conv["conversation_url"]
    code, out, _ = await run("conversations", "list", "--status", "waiting", *api)
    assert conv["conversation_id"] in out
    code, out, _ = await run("conversations", "end", conv["conversation_id"], *api)
    assert json.loads(out)["status"] == "CONVERSATION_STATUS_ENDED"
    code, out, _ = await run("events", "tail", conv["conversation_id"], "--json", *api)
    lines = [json.loads(line) for line in out.splitlines()]
    assert [e["event_type"] for e in lines] == [streams.SHUTDOWN, streams.TRANSCRIPTION_READY]
    assert lines[0]["properties"] == {"reason": "ended_by_api"}
    code, out, _ = await run("conversations", "get", conv["conversation_id"], *api)
    assert json.loads(out)["end_reason"] == "ended_by_api"

    code, _, err = await run("personas", "get", "p_" + "0" * 20, *api)
    assert code == 1 and "NOT_FOUND" in err
    code, _, err = await run("conversations", "create", "--max-duration", "-3", *api)
    assert code == 2 and "max_duration_s must not be negative" in err
    code, _, err = await run("personas", "list", "--address", control.address, "--api-key", "wrong")
    assert code == 1 and "UNAUTHENTICATED" in err
    code, out, _ = await run("personas", "delete", persona["persona_id"], *api)
    assert code == 0
    code, out, _ = await run("admin", "keys", "revoke", issued["key_id"], *redis)
    assert code == 0
