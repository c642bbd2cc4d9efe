"""Barge-in through the browser: the user speaks while the replica tells a long story; it stops at once."""

from __future__ import annotations

import pytest

from tests.gateway.conftest import browser, dump, mic_wav, open_call, parley_state, wait_for

pytestmark = pytest.mark.e2e

STORYTELLER = ("You are a storyteller in a video call. Whatever you are asked, answer with a long story of at "
               "least ten sentences.")


async def test_speaking_over_the_reply_stops_the_replica(parley, control, speak, tmp_path):
    persona_id = await control.persona("storyteller", STORYTELLER)
    conv = await control.create(name="barge-in", persona_id=persona_id)
    question = speak("Please tell me a long story about a brave knight.", rate=48_000)
    interruption = speak("Wait, stop please. I have another question.", rate=48_000)
    # The question at 3 s; from 10 s on the user talks again and again, muted until the test unmutes the
    # microphone while the replica speaks (so the barge-in lands mid-reply whatever the reply latency).
    wav = mic_wav(tmp_path / "mic.wav", [(3.0, question)] + [(10.0 + 3.5 * i, interruption) for i in range(14)],
                  total_s=62)
    async with browser(tmp_path, wav) as context:
        page = await open_call(context, conv.conversation_url, camera=0)
        await wait_for(page, "p => p.mic.segments.length >= 1", 30)
        await page.evaluate("() => window.parley.mute()")
        await wait_for(page, "p => p.replicaSpeaking", 90)
        await page.wait_for_timeout(1500)
        assert (await parley_state(page))["replicaSpeaking"], "the reply ended before the barge-in could start"
        unmuted_at = await page.evaluate("() => { window.parley.mute(); return performance.now(); }")
        await wait_for(page, "p => p.events.some(e => e.type === 'replica.stopped_speaking' && e.interrupted)", 15)
        await page.evaluate("() => window.parley.mute()")
        await page.wait_for_timeout(1200)
        state = await parley_state(page)
    dump(tmp_path / "state.json", state)

    stop = next(e for e in state["events"] if e["type"] == "replica.stopped_speaking" and e["interrupted"])
    barge_start = state["mic"]["speechStartAt"]
    assert unmuted_at - 50 <= barge_start < stop["at"], (unmuted_at, barge_start, stop)
    reaction_ms = stop["at"] - barge_start
    print(f"barge-in: user speech start -> replica stopped {reaction_ms:.0f} ms; heard: {stop['text']!r}")
    assert reaction_ms < 2500, reaction_ms
    # the replica's audio went quiet right after the stop (no new reply started in the window)
    restarted = [e for e in state["events"] if e["type"] == "replica.started_speaking" and e["at"] > stop["at"]]
    if not restarted:
        assert state["remoteLastLoudAt"] < stop["at"] + 400, (state["remoteLastLoudAt"], stop["at"])
    # the control plane heard it too: an interrupted stop and what the replica had said
    events = await control.events(conv.conversation_id)
    assert any(k == "conversation.replica.stopped_speaking" and d.get("interrupted") for k, d in events), events
