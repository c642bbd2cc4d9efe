"""The "Use from your backend" SDK example in services/control/README.md runs as written (against a live
control service, the fake builder, and a local receiver in place of the example's callback host)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from pathlib import Path

from parley.client import AsyncParleyClient, verify_webhook
from services.control import streams
from tests.control.conftest import png_photo, wait_for

README = Path(__file__).resolve().parents[2] / "services" / "control" / "README.md"


def example_code() -> tuple[str, str]:
    text = README.read_text()
    section = text[text.index("## Use from your backend"):]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    return blocks[0], blocks[1]


async def test_readme_sdk_example_runs(control, api_key, receiver, redis_client, monkeypatch, tmp_path):
    code, webhook_code = example_code()
    code = code.replace("https://backend.example.com/parley-events", receiver.url)
    (tmp_path / "anna.jpg").write_bytes(png_photo())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PARLEY_API_KEY", api_key)
    monkeypatch.setenv("PARLEY_API_ADDRESS", control.address)
    out = io.StringIO()

    def run() -> None:
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})

    example = asyncio.create_task(asyncio.to_thread(run))
    async with AsyncParleyClient(control.address, api_key=api_key) as parley:
        conv = await wait_for(lambda: _first_conversation(parley), within=60)
        cid = conv.conversation_id
        prefix = control.config.key_prefix
        await streams.publish_event(redis_client, cid, streams.UTTERANCE, {"role": "user", "text": "Late checkout?"},
                                    prefix)
        await streams.publish_event(redis_client, cid, streams.UTTERANCE,
                                    {"role": "replica", "text": "Until 2 pm, yes."}, prefix)
        await asyncio.sleep(0.5)
        await parley.end_conversation(cid)
        await asyncio.wait_for(example, 20)
        secret = await parley.webhook_secret()
    printed = out.getvalue()
    assert "100%  done" in printed and f"send the guest to http://127.0.0.1:8080/c/{cid}?t=" in printed
    assert "user: Late checkout?\nreplica: Until 2 pm, yes.\nended: ended_by_api" in printed
    kinds = [streams.decode_entry(f)[0] for _, f in await redis_client.xrange(streams.interactions_key(cid, prefix))]
    assert kinds == ["append_context", "echo", "set_emotion", "end"]

    # the webhook snippet accepts what Parley sent
    await wait_for(lambda: receiver.received, within=10)
    hit = receiver.received[0]
    namespace = {"WEBHOOK_SECRET": secret}
    exec(compile(webhook_code, str(README), "exec"), namespace)
    handled = io.StringIO()
    with contextlib.redirect_stdout(handled):
        namespace["handle"](hit.body, hit.headers)
    assert handled.getvalue().startswith(verify_webhook(secret, hit.body, hit.headers["X-Parley-Signature"])[
        "event_type"])


async def _first_conversation(parley):
    page = await parley.list_conversations()
    return page.items[0] if page.items else None
