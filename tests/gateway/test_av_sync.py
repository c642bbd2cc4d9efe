"""A/V sync at the client: the renderer's test pattern (a white frame and a 1 kHz beep starting at the same
pts, once a second) measured in the page: when the flash frame is displayed (requestVideoFrameCallback,
expectedDisplayTime, brightness of the decoded frame) against when the beep's first loud sample is played out
(MediaStreamTrackProcessor on the remote audio track: the audio as the browser renders it, on the same
performance clock). The WebAudio analyser's view of the same beeps is recorded too; it hears them later by
WebAudio's own input buffering and output latency, so it is reported, not asserted."""

from __future__ import annotations

import numpy as np
import pytest

from tests.gateway.conftest import browser, dump, mic_wav, open_call, parley_state, wait_for

pytestmark = pytest.mark.e2e


def pair_offsets(flashes: list[float], beeps: list[float], max_gap_ms: float = 300.0) -> list[float]:
    """beep - flash (ms) for each flash with a beep within ``max_gap_ms``."""
    out = []
    for f in flashes:
        if beeps:
            b = min(beeps, key=lambda x: abs(x - f))
            if abs(b - f) <= max_gap_ms:
                out.append(b - f)
    return out


async def test_flash_and_beep_arrive_together(parley, control, tmp_path):
    silence = mic_wav(tmp_path / "silence.wav", [], total_s=30)
    conv = await control.create(name="av sync")
    async with browser(tmp_path, silence) as context:
        page = await open_call(context, conv.conversation_url, camera=0, test_pattern=1)
        await wait_for(page, "p => p.flashes.length >= 14 && p.beeps.length >= 14", 90)
        state = await parley_state(page)
        state["rtc"] = [await page.evaluate("() => window.parley.rtcStats()") for _ in range(3)]
    dump(tmp_path / "state.json", state)
    # skip the first seconds (jitter buffers settling)
    flashes, beeps = state["flashes"][3:], state["beeps"][3:]
    offsets = pair_offsets(flashes, beeps)
    webaudio = pair_offsets(flashes, state["beepsWebAudio"][3:])
    print("A/V offsets, audio played out - frame displayed (ms):", [round(o, 1) for o in offsets])
    print("  WebAudio analyser onset - frame displayed (ms):", [round(o, 1) for o in webaudio])
    print("  video codec:", (state["rtc"][0].get("video") or {}).get("codec"))
    assert state["hello"]["test_pattern"] and state["hello"]["renderer"] == "renderer"
    assert len(offsets) >= 8, (flashes, beeps)
    median = float(np.median(offsets))
    assert abs(median) <= 40, f"median A/V offset {median:.1f} ms"
    within = float(np.mean(np.abs(offsets) <= 40))
    assert within >= 0.8, f"only {within:.0%} of flash/beep pairs within 40 ms: {offsets}"
