"""A real browser talks to the replica: voice in, lip-synced face and voice out, measured in the page."""

from __future__ import annotations

import time

import pytest

from tests.gateway.conftest import browser, dump, mic_wav, open_call, parley_state, wait_for

pytestmark = pytest.mark.e2e

STATUS_JS = ("t => fetch(location.pathname.replace('/c/', '/api/conversations/') + '/session',"
             " {headers: {Authorization: 'Bearer ' + t}}).then(r => r.json())")


async def test_spoken_question_gets_a_face_and_voice_reply(parley, control, speak, tmp_path):
    question = speak("What is the capital of France?", rate=48_000)
    wav = mic_wav(tmp_path / "question.wav", [(3.0, question)], total_s=60)
    conv = await control.create(name="browser e2e")
    assert conv.conversation_url.startswith(parley.gateway_url + "/c/" + conv.conversation_id)
    async with browser(tmp_path, wav) as context:
        page = await open_call(context, conv.conversation_url, camera=1)
        # idle video flows before anyone speaks
        await wait_for(page, "p => p.frames > 10 && p.nonBlank", 30)
        await wait_for(page, "p => p.latencies.length > 0", 120)
        await wait_for(page, "p => p.captions.some(c => c.role === 'replica')", 120)
        state = await parley_state(page)
        await page.screenshot(path=str(tmp_path / "call.png"))
        status = await page.evaluate(STATUS_JS, conv.conversation_url.split("t=", 1)[1])

        # a network blip: the page reconnects (new peer connection, same conversation) and goes on
        await page.evaluate("() => window.parley.simulateNetworkBlip()")
        await wait_for(page, "p => p.connected && p.connections >= 2", 30)
        frames = (await parley_state(page))["frames"]
        await wait_for(page, f"p => p.frames > {frames + 30}", 30)
        # and a typed message gets a spoken answer over the new connection
        await page.evaluate("() => window.parley.sendText('Say hello to my friend.')")
        await wait_for(page, "p => p.captions.filter(c => c.role === 'replica').length >= 2", 120)
        after = await parley_state(page)
        status_after = await page.evaluate(STATUS_JS, conv.conversation_url.split("t=", 1)[1])
    dump(tmp_path / "state.json", state)
    print("voice-to-face (page):", state["latencies"], "server:", state["serverLatencies"], "frames:", state["frames"])

    assert state["frames"] > 30 and state["nonBlank"], state
    assert state["frameSize"][0] >= 64
    user = [c["text"].lower() for c in state["captions"] if c["role"] == "user"]
    assert any("capital" in t and "france" in t for t in user), state["captions"]
    replica = [c["text"] for c in state["captions"] if c["role"] == "replica"]
    assert replica and replica[0].strip(), state["captions"]
    assert state["remoteSpeechBlocks"] > 50, "the reply audio did not play in the page"
    latency = state["latencies"][0]
    assert 0 < latency < 15_000, latency
    assert state["turns"][0]["exact"], "the first speaking frame was not identified by its RTP timestamp"
    assert status["camera_frames"] > 0 and status["mic_frames"] > 100, status
    assert (tmp_path / "call.png").stat().st_size > 10_000
    # reconnect after the blip: one resume, same conversation, media and replies flowing again
    assert after["reconnects"] == 1 and after["hello"]["conversation_id"] == conv.conversation_id
    assert status_after["connection"] == "connected" and status_after["mic_frames"] > status["mic_frames"]
    assert {"role": "user", "text": "Say hello to my friend.", "typed": True} in after["captions"]

    # the control plane saw the call through the events stream
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kinds = [k for k, _ in await control.events(conv.conversation_id)]
        if "conversation.replica.stopped_speaking" in kinds:
            break
    for kind in ("system.replica_joined", "system.participant_joined", "conversation.user.started_speaking",
                 "conversation.user.stopped_speaking", "conversation.replica.started_speaking",
                 "conversation.replica.stopped_speaking", "conversation.utterance"):
        assert kind in kinds, (kind, kinds)
