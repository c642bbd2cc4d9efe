"""The web client explains what went wrong: an expired link, a link without its token, a denied microphone."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from services.control.auth import join_secret, sign_join_token
from tests.gateway.conftest import CHROMIUM, chromium_args, mic_wav, parley_state, require_chromium, wait_for

pytestmark = pytest.mark.e2e


async def test_page_explains_expired_link_missing_token_and_denied_microphone(parley, control, tmp_path):
    require_chromium()
    from playwright.async_api import async_playwright

    conv = await control.create(name="errors")
    client = aioredis.from_url(parley.redis_url, decode_responses=True)
    expired = sign_join_token(await join_secret(client), conv.conversation_id, time.time() - 60)
    await client.aclose()
    page_url = f"{parley.gateway_url}/c/{conv.conversation_id}"
    args = [a for a in chromium_args(mic_wav(tmp_path / "s.wav", [], 5)) if a != "--use-fake-ui-for-media-stream"]
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, headless=False, args=args)
        try:
            granted = await chromium.new_context(permissions=["microphone", "camera"])
            page = await granted.new_page()
            await page.goto(f"{page_url}?t={expired}&camera=0")
            await wait_for(page, "p => p.error", 20)
            state = await parley_state(page)
            assert state["errorCode"] == "token_expired", state
            assert "expired" in await page.inner_text("#overlay-text")

            await page.goto(page_url)
            await wait_for(page, "p => p.error", 20)
            assert (await parley_state(page))["errorCode"] == "missing_token"
            assert "join token" in await page.inner_text("#overlay-text")

            denied = await chromium.new_context()  # no permission: the microphone prompt is refused
            page = await denied.new_page()
            await page.goto(conv.conversation_url + "&camera=0")
            await wait_for(page, "p => p.error", 20)
            assert (await parley_state(page))["errorCode"] == "mic_denied"
            assert "Microphone access was denied" in await page.inner_text("#overlay-text")
        finally:
            await chromium.close()
