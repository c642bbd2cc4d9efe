"""Latency and memory figures of the ASR service: ``python -m tests.asr.measure [--turns N]``.

Starts Redis and ``python -m services.asr`` (CPU default: Whisper tiny.en int8) and streams a ~3 s
spoken question in real time (20 ms frames at 48 kHz). Controls are sent when the stream's clock
reaches the moment the turn service would send them: SPEECH_ENDED ``--vad-stop-ms`` after the speech
ends, FINALIZE ``--eot-ms`` after that. Three modes, ``--turns`` turns each:

* ``orchestrator``: partials on, SPEECH_ENDED then FINALIZE (what the orchestrator does),
* ``finalize_only``: partials on, FINALIZE only (no SPEECH_ENDED),
* ``fresh``: a second service with ``pause_decode=false``, partials off, FINALIZE only: nothing can be
  reused, so FINALIZE -> final is a full decode.

Reports FINALIZE -> final wall time on the client, the service's decode time of the final
(``Transcript.compute_ms``), whether the final reused an earlier decode, and the service's RSS.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

import grpc
import numpy as np

from parley.audio import Audio, resample
from parley.redis_server import RedisProcess
from parley.session_store import SessionStore
from parley.v1 import asr_pb2, asr_pb2_grpc

from .conftest import control, frames, start, with_silence

TEXT = "Could you tell me what the weather will be like tomorrow?"


def speech_end_s(audio: Audio) -> float:
    """End of the last 10 ms window within 40 dB of the loudest one (the TTS adds trailing silence)."""
    window = audio.sample_rate // 100
    n = len(audio.samples) // window
    power = np.mean(np.square(audio.samples[: n * window].reshape(n, window), dtype=np.float64), axis=1)
    level = 10 * np.log10(power + 1e-12)
    return (int(np.flatnonzero(level > level.max() - 40)[-1]) + 1) / 100


def _rss_mb(pid: int) -> dict[str, float]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                name, value = line.split(":")
                fields[name] = round(int(value.split()[0]) / 1024, 1)
    return fields


async def _turn(
    stub, session_id: str, audio: Audio, end_us: int, partials: bool, early: bool, vad_stop_s: float, eot_s: float
) -> dict:
    """One user turn streamed in real time with the controls placed on the stream's clock."""
    marks: dict[str, float] = {}
    ended_at = end_us + round(vad_stop_s * 1e6)
    finalize_at = ended_at + round(eot_s * 1e6)

    async def requests():
        yield start(session_id, partials=partials)
        sent_ended = False
        for request in frames(audio):
            ts = request.audio.timestamp_us
            if early and not sent_ended and ts >= ended_at:
                sent_ended = True
                yield control(asr_pb2.AsrControl.SPEECH_ENDED, end_us)
            if ts >= finalize_at:
                break
            yield request
            await asyncio.sleep(0.02)
        marks["finalize"] = time.perf_counter()
        yield control(asr_pb2.AsrControl.FINALIZE, end_us)

    n_partials = 0
    async for event in stub.Transcribe(requests()):
        if event.HasField("partial"):
            n_partials += 1
        else:
            final = event.final
            return {
                "finalize_to_final_ms": 1000 * (time.perf_counter() - marks["finalize"]),
                "decode_ms": final.compute_ms,
                "reused": final.reused_early_decode,
                "text": final.text,
                "partials": n_partials,
            }
    raise RuntimeError("no final")


async def _measure(port: int, redis_url: str, audio: Audio, end_us: int, modes: dict, args) -> dict:
    store = SessionStore(redis_url)
    session_id = await store.create()
    results: dict[str, list[dict]] = {name: [] for name in modes}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = asr_pb2_grpc.AsrStub(channel)
        for _ in range(args.turns):
            for name, (partials, early) in modes.items():
                seconds = (args.vad_stop_ms / 1000, args.eot_ms / 1000)
                results[name].append(await _turn(stub, session_id, audio, end_us, partials, early, *seconds))
    await store.close()
    return results


def _with_service(redis_url: str, env_extra: dict[str, str], fn) -> tuple[dict, dict]:
    """Run ``fn(port)`` against a fresh ``python -m services.asr``; returns its result and the RSS."""
    env = {
        **os.environ,
        "PARLEY_ASR__SERVER__PORT": "0",
        "PARLEY_ASR__SERVER__METRICS_PORT": "0",
        "PARLEY_COMMON__SERVER__REDIS_URL": redis_url,
        **env_extra,
    }
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "services.asr"], stdout=subprocess.PIPE, env=env, text=True)
    try:
        ready = json.loads(proc.stdout.readline())
        memory = {"startup_to_ready_s": round(time.perf_counter() - t0, 2), "after_warmup": _rss_mb(proc.pid)}
        result = fn(ready["port"])
        memory["after_turns"] = _rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    return result, memory


def run(args) -> dict:
    """Start Redis and the service, measure every mode, stop everything."""
    from hibari import SAMPLE_RATE, Hibari

    raw = Audio(resample(Hibari()(TEXT, seed=7), SAMPLE_RATE, 48_000), 48_000)
    audio = with_silence(raw, 0.3, 1.5)
    end_us = round((0.3 + speech_end_s(raw)) * 1e6)
    redis = RedisProcess().start()
    try:
        main_modes = {"orchestrator": (True, True), "finalize_only": (True, False)}
        results, memory = _with_service(
            redis.url, {}, lambda port: asyncio.run(_measure(port, redis.url, audio, end_us, main_modes, args))
        )
        fresh, _ = _with_service(
            redis.url,
            {"PARLEY_ASR__PAUSE_DECODE": "false"},
            lambda port: asyncio.run(_measure(port, redis.url, audio, end_us, {"fresh": (False, False)}, args)),
        )
        results.update(fresh)
    finally:
        redis.stop()

    def med(rows: list[dict], field: str) -> float:
        return round(statistics.median(r[field] for r in rows), 1)

    return {
        "utterance_s": round(raw.duration_s, 2),
        "speech_s": round(speech_end_s(raw), 2),
        "turns": args.turns,
        "speech_end_to_speech_ended_ms": args.vad_stop_ms,
        "speech_ended_to_finalize_ms": args.eot_ms,
        "finalize_to_final_ms_median": {k: med(v, "finalize_to_final_ms") for k, v in results.items()},
        "final_decode_ms_median": {k: med(v, "decode_ms") for k, v in results.items()},
        "finalize_to_final_ms_all": {k: [round(r["finalize_to_final_ms"], 1) for r in v] for k, v in results.items()},
        "reused": {k: [r["reused"] for r in v] for k, v in results.items()},
        "texts": sorted({r["text"] for v in results.values() for r in v}),
        "service": memory,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--vad-stop-ms", type=int, default=200, help="speech end -> SPEECH_ENDED (audio time)")
    parser.add_argument("--eot-ms", type=int, default=200, help="SPEECH_ENDED -> FINALIZE (audio time)")
    print(json.dumps(run(parser.parse_args()), indent=2))
