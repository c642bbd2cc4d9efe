"""Browser end-to-end benchmark: voice-to-face latency over N spoken turns, and gateway CPU per call.

    python -m bench.e2e --turns 10 --out bench/results/e2e.json

Starts the whole local stack (Redis, turn, asr, llm, tts, renderer, control, gateway) on loopback. Each turn
is one call, like ``bench.voice_core`` runs each turn in a fresh session: a conversation is created through
the control API and its ``conversation_url`` opened in headless Chromium whose microphone plays that turn's
question (hibari TTS, 48 kHz; a different question per turn). The page measures the voice-to-face latency:
the end of the user's speech in its microphone (an energy VAD on the captured audio) to the display time of
the first video frame of the reply that carries speech (requestVideoFrameCallback; the frame is identified
by its RTP timestamp). The gateway's server-side figure (speech end -> playback start on the render clock)
and the voice-core breakdown come with each turn. Gateway and renderer CPU are read from /proc while the
calls run (cores used by one call). A screenshot of the last call goes next to the JSON (``e2e.png``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.voice_core import QUESTIONS, percentiles
from parley.audio import Audio, resample
from parley.redis_server import RedisProcess

BREAKDOWN = ("end_of_turn_ms", "asr_final_ms", "llm_first_token_ms", "tts_first_audio_ms", "total_ms",
             "server_voice_to_face_ms")
LEAD_S = 2.5


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def question_wav(path: Path, text: str, seed: int) -> Path:
    """A 48 kHz WAV: silence, the question at LEAD_S, silence (the reply comes during it)."""
    from hibari import SAMPLE_RATE, Hibari

    from tests.gateway.conftest import mic_wav

    audio = resample(Hibari()(text, seed=seed), SAMPLE_RATE, 48_000)
    return mic_wav(path, [(LEAD_S, Audio(audio, 48_000))], total_s=LEAD_S + 40)


async def run_turn(stack: Any, control: Any, run_dir: Path, i: int, shot: Path | None) -> dict[str, Any]:
    """One call: ask question ``i`` and wait until the reply has been shown and spoken."""
    from tests.gateway.conftest import browser, open_call, parley_state, wait_for

    turn_dir = run_dir / f"turn{i}"
    turn_dir.mkdir()
    text = QUESTIONS[i % len(QUESTIONS)]
    wav = question_wav(turn_dir / "question.wav", text, seed=i)
    conv = await control.create(name=f"bench e2e {i}")
    async with browser(turn_dir, wav) as context:
        gw0, r0, t0 = cpu_seconds(stack.gateway_pid), _renderer_cpu(stack), time.monotonic()
        page = await open_call(context, conv.conversation_url, camera=0)
        error = ""
        try:
            await wait_for(page, "p => p.turns.length >= 1", 90)
            await wait_for(page, "p => p.captions.some(c => c.role === 'replica')", 90)
        except Exception as exc:  # report what was measured
            error = f"{type(exc).__name__}"
        wall = time.monotonic() - t0
        gw1, r1 = cpu_seconds(stack.gateway_pid), _renderer_cpu(stack)
        state = await parley_state(page)
        state["rtc"] = await page.evaluate("() => window.parley.rtcStats()")
        if shot is not None:
            await page.screenshot(path=str(shot))
    face = state["turns"][0] if state["turns"] else {}
    server = next((e for e in state["events"] if e["type"] == "latency.server"), None)
    row = {"question": text, "transcript": next((c["text"] for c in state["captions"] if c["role"] == "user"), ""),
           "reply": next((c["text"] for c in state["captions"] if c["role"] == "replica"), ""),
           "voice_to_face_ms": face.get("voice_to_face_ms"), "exact_frame": face.get("exact"),
           "server": server["breakdown"] if server else {}, "error": error,
           "frames": state["frames"], "wall_s": round(wall, 2), "gateway_cpu_s": round(gw1 - gw0, 3),
           "renderer_cpu_s": round(r1 - r0, 3) if r0 is not None and r1 is not None else None,
           "receiver": state.get("rtc")}
    print(json.dumps({k: row[k] for k in ("question", "voice_to_face_ms", "error")}
                     | {"server_ms": row["server"].get("server_voice_to_face_ms")}), flush=True)
    return row


async def run_turns(stack: Any, run_dir: Path, turns: int, shot: Path) -> list[dict[str, Any]]:
    from tests.gateway.conftest import ControlClient

    control = ControlClient(stack)
    try:
        return [await run_turn(stack, control, run_dir, i, shot if i == turns - 1 else None) for i in range(turns)]
    finally:
        await control.close()


def _renderer_cpu(stack: Any) -> float | None:
    pid = stack.extra.get("renderer_pid")
    return cpu_seconds(pid) if pid else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--out", default="bench/results/e2e.json")
    args = parser.parse_args()
    if not shutil.which("chromium"):
        raise SystemExit("chromium is required: apt-get install -y chromium")
    from tests.gateway.conftest import parley_stack

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        redis = RedisProcess().start()
        try:
            with parley_stack(redis.url, run_dir) as stack:
                stack.extra["renderer_pid"] = _pid_of(run_dir / "stages" / "stack.json", "renderer")
                rows = asyncio.run(run_turns(stack, run_dir, args.turns, out.with_suffix(".png")))
        finally:
            redis.stop()
    ok = [r for r in rows if r["voice_to_face_ms"] is not None and not r["error"]]
    wall = sum(r["wall_s"] for r in rows)
    renderer_cpu = [r["renderer_cpu_s"] for r in rows if r["renderer_cpu_s"] is not None]
    report = {
        "benchmark": "e2e",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_after": os.getloadavg()},
        "setup": {"renderer": "renderer service (cpu)",
                  "browser": "headless Chromium (playwright), fake microphone from a WAV",
                  "video": f"{rows[-1]['receiver'] and rows[-1]['receiver'].get('video', {}).get('codec')}",
                  "transport": "WebRTC on loopback", "turn": "one call per turn (fresh conversation)"},
        "turns": len(rows),
        "turns_measured": len(ok),
        "voice_to_face_ms": {
            "client": percentiles([r["voice_to_face_ms"] for r in ok]),
            "server": percentiles([r["server"]["server_voice_to_face_ms"] for r in ok
                                   if "server_voice_to_face_ms" in r["server"]]),
            "breakdown": {name: percentiles([r["server"][name] for r in ok if name in r["server"]])
                          for name in BREAKDOWN},
        },
        "definition": "client: end of the user's speech in the page's microphone -> display of the first "
                      "reply frame carrying speech (requestVideoFrameCallback, frame found by RTP timestamp); "
                      "server: end of speech at the gateway -> playback start on the render clock; breakdown: "
                      "the voice core's marks from the end of speech (as in bench.voice_core)",
        "gateway_cpu": {"cores_per_call": round(sum(r["gateway_cpu_s"] for r in rows) / wall, 3),
                        "cpu_s": round(sum(r["gateway_cpu_s"] for r in rows), 2), "call_wall_s": round(wall, 1)},
        "renderer_cpu_cores_per_call": round(sum(renderer_cpu) / wall, 3) if renderer_cpu else None,
        "rows": [{k: v for k, v in r.items() if k != "receiver"} for r in rows],
        "receiver_last_call": rows[-1]["receiver"],
        "screenshot": str(out.with_suffix(".png")),
    }
    out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: report[k] for k in ("turns_measured", "voice_to_face_ms", "gateway_cpu")}, indent=2))


def _pid_of(stack_json: Path, name: str) -> int | None:
    try:
        return json.loads(stack_json.read_text())["pids"].get(name)
    except (OSError, ValueError, KeyError):
        return None


if __name__ == "__main__":
    main()
