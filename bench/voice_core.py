"""Voice-core latency benchmark: N spoken turns through the local stack with the CPU default backends.

    python -m bench.voice_core --turns 12 --out bench/results/voice_core.json

Each turn synthesizes a different question (hibari TTS), streams it in real time through the running
services over gRPC, and records the latency breakdown (ms from the end of the user's speech).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from parley.audio import Audio
from services.cli.converse import converse_once
from services.cli.stack import Stack

QUESTIONS = [
    "What is the capital of France?",
    "How are you doing today?",
    "Can you recommend a good book to read?",
    "What is your favorite color?",
    "Tell me something interesting about the ocean.",
    "What should I cook for dinner tonight?",
    "How far away is the moon?",
    "What is the weather usually like in spring?",
    "Do you like music?",
    "Why is the sky blue?",
    "What time is it in Tokyo?",
    "Can you help me plan a trip to Italy?",
]

FIELDS = ("end_of_turn_ms", "asr_final_ms", "llm_first_token_ms", "tts_first_audio_ms", "total_ms",
          "server_turn_ms", "server_asr_ms", "server_llm_ms", "server_tts_ms", "model_ms", "overhead_ms")


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 / p95 / min / max / n of ``values`` (``{"n": 0}`` when empty)."""
    arr = np.asarray(values, dtype=float)
    if not arr.size:
        return {"n": 0}
    return {"p50": round(float(np.percentile(arr, 50)), 1), "p95": round(float(np.percentile(arr, 95)), 1),
            "min": round(float(arr.min()), 1), "max": round(float(arr.max()), 1), "n": int(arr.size)}


async def run_turns(info, turns: int) -> list[dict]:
    from hibari import SAMPLE_RATE, Hibari

    tts = Hibari()
    out = []
    for i in range(turns):
        text = QUESTIONS[i % len(QUESTIONS)]
        audio = Audio(tts(text, seed=i), SAMPLE_RATE)
        result = await converse_once(info.endpoints, info.redis_url, audio)
        row = {"question": text, "transcript": result.transcript, "reply": result.reply_text,
               "error": result.error, "latency": result.latency}
        print(json.dumps({"turn": i, "total_ms": result.latency.get("total_ms"), "transcript": result.transcript,
                          "reply": result.reply_text[:80], "error": result.error}), flush=True)
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=12)
    parser.add_argument("--out", default="bench/results/voice_core.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as run_dir, Stack(run_dir=run_dir) as info:
        started = time.time()
        rows = asyncio.run(run_turns(info, args.turns))
    ok = [r for r in rows if not r["error"] and r["latency"].get("total_ms", -1) > 0]
    summary = {name: percentiles([r["latency"][name] for r in ok if name in r["latency"]])
               for name in FIELDS if any(name in r["latency"] for r in ok)}
    report = {
        "benchmark": "voice_core",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "backends": {"turn": "silero-vad + smart-turn v3.2 (onnxruntime, CPU)",
                     "asr": "faster-whisper tiny.en int8 (CPU)", "llm": "SmolLM2-135M-Instruct Q4_1 (xllamacpp, CPU)",
                     "tts": "hibari (onnxruntime, CPU)"},
        "turns": len(rows),
        "successful_turns": len(ok),
        "latency_ms": summary,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({"latency_ms": summary, "successful_turns": len(ok)}, indent=2))


if __name__ == "__main__":
    main()
