"""Two browser calls at once on one gateway do not hear or see each other."""

from __future__ import annotations

import pytest

from tests.gateway.conftest import browser, dump, mic_wav, open_call, parley_state, wait_for

pytestmark = pytest.mark.e2e


async def test_two_calls_do_not_hear_or_see_each_other(parley, control, speak, tmp_path):
    question = speak("What is the capital of France?", rate=48_000)
    wav = mic_wav(tmp_path / "question.wav", [(3.5, question)], total_s=60)
    conv_a = await control.create(name="call A")
    conv_b = await control.create(name="call B")
    async with browser(tmp_path, wav) as context:
        # B: muted microphone, test-pattern face (white flashes, beeps); A: talks to a normal face
        page_b = await open_call(context, conv_b.conversation_url, camera=0, test_pattern=1)
        await page_b.evaluate("() => window.parley.mute()")
        page_a = await open_call(context, conv_a.conversation_url, page=await context.new_page(), camera=0)
        await wait_for(page_a, "p => p.replicaSpeaking", 120)
        before = await parley_state(page_b)
        await wait_for(page_a, "p => p.captions.some(c => c.role === 'replica')", 120)
        after = await parley_state(page_b)
        state_a = await parley_state(page_a)
    dump(tmp_path / "a.json", state_a)
    dump(tmp_path / "b.json", after)

    # A heard its user and answered; B's call saw none of it
    assert any(c["role"] == "user" for c in state_a["captions"]) and state_a["latencies"], state_a["captions"]
    assert not after["captions"] and not after["latencies"], after["captions"]
    assert not [e for e in after["events"] if e["type"] in ("transcript", "replica.started_speaking")]
    # B's face is its own test pattern, A never shows a flash
    assert after["flashes"] and after["brightFrames"] > 3 and state_a["frames"] > 60
    assert state_a["brightFrames"] == 0, state_a["brightFrames"]
    # while A's replica spoke, B's audio was its beeps only (100 ms a second), not A's speech
    blocks = after["remoteBlocks"] - before["remoteBlocks"]
    loud = after["remoteLoudBlocks"] - before["remoteLoudBlocks"]
    assert blocks > 300 and loud / blocks < 0.25, (loud, blocks)
    assert state_a["remoteSpeechBlocks"] > 50
    # and on the server: utterances only in A's conversation
    kinds_a = [k for k, _ in await control.events(conv_a.conversation_id)]
    kinds_b = [k for k, _ in await control.events(conv_b.conversation_id)]
    assert "conversation.utterance" in kinds_a
    assert "conversation.utterance" not in kinds_b and "conversation.user.started_speaking" not in kinds_b, kinds_b
