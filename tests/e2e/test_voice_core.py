"""A spoken turn through the real stage services over gRPC, barge-in, metrics, and the CLI."""

import asyncio
import json
import re
import subprocess
import sys

import grpc
import httpx
import numpy as np
import pytest

from parley.audio import encode_frame, read_wav, resample, write_wav
from parley.session_store import SessionStore
from parley.v1 import asr_pb2, asr_pb2_grpc
from services.cli.converse import converse_once, paced_feed
from services.cli.stack import ROOT
from services.orchestrator import (
    Conversation,
    OrchestratorConfig,
    ReplyAudio,
    ReplyDone,
    ReplyInterrupted,
    StageEndpoints,
    StageFailed,
)
from services.orchestrator.clients import StageClients

pytestmark = pytest.mark.e2e

LATENCY_FIELDS = ("end_of_turn_ms", "asr_final_ms", "llm_first_token_ms", "tts_first_audio_ms", "total_ms")


async def transcribe(endpoint, store, samples, rate):
    """Transcribe audio with the running ASR service (an independent check of the reply audio)."""
    sid = await store.create(purpose="check")
    samples = resample(samples, rate, 16_000)

    def requests():
        yield asr_pb2.AsrRequest(start=asr_pb2.AsrStart(session={"session_id": sid}, language="en"))
        for i in range(0, len(samples), 16_000):
            yield asr_pb2.AsrRequest(audio=encode_frame(samples[i:i + 16_000], 16_000, i * 1_000_000 // 16_000))
        yield asr_pb2.AsrRequest(control=asr_pb2.AsrControl(kind=asr_pb2.AsrControl.FINALIZE, at_us=0))

    async with grpc.aio.insecure_channel(endpoint) as channel:
        call = asr_pb2_grpc.AsrStub(channel).Transcribe(requests())
        async for event in call:
            if event.HasField("final"):
                call.cancel()
                return event.final.text
    return ""


async def test_spoken_question_gets_a_spoken_answer(stack, speak, redis_url):
    question = speak("What is the capital of France?")
    result = await converse_once(stack.endpoints, stack.redis_url, question)
    assert not result.error, result.error
    assert "capital" in result.transcript.lower() and "france" in result.transcript.lower()
    assert result.reply_text.strip()
    for name in LATENCY_FIELDS:
        assert result.latency[name] > 0, (name, result.latency)
    assert result.latency["end_of_turn_ms"] <= result.latency["asr_final_ms"] <= result.latency["total_ms"]
    assert result.reply_audio is not None and result.reply_audio.duration_s > 0.3

    store = SessionStore(redis_url)
    try:
        heard = await transcribe(stack.endpoints["asr"], store, result.reply_audio.samples,
                                 result.reply_audio.sample_rate)
        letters = re.sub(r"[^A-Za-z]", "", heard)
        assert len(letters) >= 3 and len(letters) >= 0.6 * len(heard.replace(" ", "")), heard
        transcript = await store.transcript(result.session_id)
        assert [u["role"] for u in transcript] == ["user", "replica"]
        assert transcript[0]["text"] == result.transcript and transcript[1]["text"] == result.reply_text
        turns = await store.turns(result.session_id)
        assert turns[0]["latency"]["total_ms"] == result.latency["total_ms"] and not turns[0]["interrupted"]
    finally:
        await store.close()


async def test_barge_in_cancels_llm_and_tts_streams(stack, speak, redis_url):
    config = OrchestratorConfig(endpoints=StageEndpoints(**stack.endpoints), redis_url=redis_url, max_tokens=300)
    clients = StageClients(config.endpoints)
    store = SessionStore(redis_url)
    conv = Conversation(clients, config, store)
    await conv.start()
    events = []
    first_audio = asyncio.Event()
    interrupted = asyncio.Event()

    async def collect():
        async for event in conv.events():
            events.append(event)
            if isinstance(event, ReplyAudio):
                first_audio.set()
            if isinstance(event, ReplyInterrupted):
                interrupted.set()

    collector = asyncio.create_task(collect())
    stop_feed = asyncio.Event()
    feeder = asyncio.create_task(
        paced_feed(conv, speak("Please tell me a very long story about a dragon and a knight."), stop_feed)
    )
    await asyncio.wait_for(first_audio.wait(), 30)
    stop_feed.set()
    await feeder
    reply = conv.last_reply
    assert not reply.llm_call.done(), "the LLM should still be generating when the user barges in"
    barge = asyncio.create_task(paced_feed(conv, speak("Wait, stop, I have a question."), asyncio.Event(), 2.0))
    await asyncio.wait_for(interrupted.wait(), 15)
    cut = len(events)
    await asyncio.sleep(1.0)
    barge.cancel()
    # Both streams ended by cancellation, and no reply audio of that turn came after the interruption.
    assert reply.llm_call.done() and reply.tts_call.done()
    assert await reply.llm_call.code() == grpc.StatusCode.CANCELLED
    assert await reply.tts_call.code() == grpc.StatusCode.CANCELLED
    stop = next(e for e in events if isinstance(e, ReplyInterrupted))
    assert stop.turn_id == reply.turn_id
    assert not [e for e in events[cut:] if isinstance(e, ReplyAudio) and e.turn_id == reply.turn_id]
    assert not [e for e in events if isinstance(e, (ReplyDone, StageFailed)) and getattr(e, "turn_id", 0) == 1]
    # The services saw the cancellation too.
    async with httpx.AsyncClient() as http:
        for name, method in (("llm", "Generate"), ("tts", "Synthesize")):
            text = (await http.get(stack.metrics[name])).text
            match = re.search(rf'parley_streams_total{{code="CANCELLED",method="{method}",service="{name}"}} (\S+)',
                              text)
            assert match and float(match.group(1)) >= 1, f"{name} did not record a cancelled stream"
    turns = await store.turns(conv.session_id)
    assert turns[-1]["interrupted"] is True
    await conv.close()
    collector.cancel()
    await clients.close()
    await store.close()


async def test_every_service_exports_stage_latency_histograms(stack):
    async with httpx.AsyncClient() as http:
        for name, url in stack.metrics.items():
            text = (await http.get(url)).text
            assert f'parley_stage_latency_seconds_bucket{{le="0.1",service="{name}"' in text, name
            assert "parley_streams_total" in text


def test_cli_converse_uses_the_running_stack(stack, speak, tmp_path):
    question = tmp_path / "question.wav"
    audio = speak("What is the capital of France?", rate=22_050)
    write_wav(question, audio.samples, audio.sample_rate)
    out = tmp_path / "reply.wav"
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "--run-dir", str(stack.run_dir), "converse",
         "--audio", str(question), "--out", str(out), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "starting one" not in proc.stderr  # it found the running stack
    summary = json.loads(proc.stdout)
    assert "france" in summary["transcript"].lower() and summary["reply_text"]
    assert all(summary["latency_ms"][k] > 0 for k in LATENCY_FIELDS)
    reply = read_wav(out)
    assert reply.duration_s > 0.3 and float(np.max(np.abs(reply.samples))) > 0.05


def test_cli_converse_writes_an_mp4_of_the_replica_speaking(stack, speak, tmp_path, astronaut_replica):
    import av

    question = tmp_path / "question.wav"
    audio = speak("What is the capital of France?")
    write_wav(question, audio.samples, audio.sample_rate)
    out = tmp_path / "reply.mp4"
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "--run-dir", str(stack.run_dir), "converse",
         "--audio", str(question), "--out", str(out), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    with av.open(str(out)) as container:
        kinds = {s.type: s for s in container.streams}
        assert kinds["video"].codec_context.name == "h264" and kinds["audio"].codec_context.name == "aac"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) >= 30 * summary["reply_audio_s"] * 0.9
    assert max(float(f.std()) for f in frames) > 20  # a face, not a blank frame


class LiveConversation:
    """A started Conversation whose reply audio and completions are collected in the background."""

    def __init__(self, config: OrchestratorConfig, redis_url: str) -> None:
        self.clients = StageClients(config.endpoints)
        self.store = SessionStore(redis_url)
        self.conv = Conversation(self.clients, config, self.store)
        self.chunks: list[ReplyAudio] = []
        self.done = asyncio.Event()

    async def __aenter__(self) -> "LiveConversation":
        await self.conv.start()
        self._task = asyncio.create_task(self._collect())
        return self

    async def _collect(self) -> None:
        async for event in self.conv.events():
            if isinstance(event, ReplyAudio):
                self.chunks.append(event)
            elif isinstance(event, ReplyDone):
                self.done.set()

    async def __aexit__(self, *exc: object) -> None:
        await self.conv.close()
        self._task.cancel()
        await self.clients.close()
        await self.store.close()


async def test_say_speaks_text_without_the_llm_and_context_reaches_the_prompt(stack, redis_url):
    config = OrchestratorConfig(endpoints=StageEndpoints(**stack.endpoints), redis_url=redis_url,
                                persona_prompt="You are Anna, a hotel concierge.")
    async with LiveConversation(config, redis_url) as live:
        conv, store, chunks, done = live.conv, live.store, live.chunks, live.done
        await conv.say("Welcome to the Grand Hotel.")
        await asyncio.wait_for(done.wait(), 30)
        assert conv.last_reply.llm_call is None  # echo bypasses the LLM
        audio = np.concatenate([c.audio.samples for c in chunks])
        heard = await transcribe(stack.endpoints["asr"], store, audio, chunks[0].audio.sample_rate)
        assert "welcome" in heard.lower() and "hotel" in heard.lower(), heard
        assert (await store.transcript(conv.session_id))[-1]["text"] == "Welcome to the Grand Hotel."

        conv.set_context("The guest is in room 1142.")
        conv.set_context("Checkout is at noon.", append=True)
        assert conv.persona_prompt.startswith("You are Anna") and "1142" in conv.persona_prompt
        assert conv.persona_prompt.endswith("Checkout is at noon.")
        done.clear()
        await conv.respond("When is checkout?")
        await asyncio.wait_for(done.wait(), 30)
        assert conv.last_reply.persona_prompt == conv.persona_prompt and conv.last_reply.llm_call is not None


async def test_persona_speed_and_patience_reach_the_stage_services(stack, speak, redis_url):
    """A faster TTS speed gives shorter speech for the same text; a patient persona still closes the turn."""
    from services.orchestrator.persona import apply_persona_layers

    async def spoken_seconds(config: OrchestratorConfig) -> float:
        async with LiveConversation(config, redis_url) as live:
            await live.conv.say("The quick brown fox jumps over the lazy dog near the river bank.")
            await asyncio.wait_for(live.done.wait(), 30)
        return max(c.audio.end_us for c in live.chunks) / 1e6

    base = OrchestratorConfig(endpoints=StageEndpoints(**stack.endpoints), redis_url=redis_url)
    fast = apply_persona_layers(base, {"tts": {"speed": 1.6}})
    normal_s, fast_s = await spoken_seconds(base), await spoken_seconds(fast)
    assert fast_s < 0.8 * normal_s, (normal_s, fast_s)

    patient = apply_persona_layers(base, {"turn_taking": {"patience": "LEVEL_HIGH"}, "asr": {"language": "en"}})
    result = await converse_once(stack.endpoints, redis_url, speak("What is the capital of France?"), patient)
    assert not result.error and "france" in result.transcript.lower()
    assert result.latency["end_of_turn_ms"] > 0
