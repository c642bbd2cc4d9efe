
import numpy as np

from parley.audio import Audio
from services.cli.converse import assemble
from services.orchestrator.clients import RequestStream
from services.orchestrator.events import ReplyAudio
from services.orchestrator.latency import FrameClock, TurnTimer
from services.orchestrator.reply import ReplyResult, SpokenWord


def test_frame_clock_maps_audio_time_to_send_time():
    clock = FrameClock()
    for i in range(10):
        clock.sent(i * 20_000, (i + 1) * 20_000, 100.0 + i * 0.02)
    assert clock.wall_at(55_000) == 100.0 + 2 * 0.02  # the frame ending at 60 ms holds 55 ms
    assert clock.wall_at(10**9) == 100.0 + 9 * 0.02
    assert FrameClock().wall_at(0) is None


def test_breakdown_and_overhead():
    timer = TurnTimer(speech_end=10.0, end_of_turn=10.3, asr_final=10.35, llm_first_token=10.6, tts_first_audio=10.8)
    timer.server_ms.update(turn=290.0, asr=40.0, llm=220.0, tts=220.0)
    out = timer.breakdown()
    assert out["end_of_turn_ms"] == 300.0 and out["total_ms"] == 800.0
    assert out["model_ms"] == 770.0 and out["overhead_ms"] == 30.0
    assert TurnTimer().breakdown()["total_ms"] == -1.0


def test_heard_text_counts_only_played_words():
    result = ReplyResult(words=[SpokenWord("Paris", 0, 400_000), SpokenWord("is", 450_000, 600_000)])
    assert result.heard_text(500_000) == "Paris"
    assert result.heard_text(0) == ""


async def test_request_stream_yields_until_closed():
    stream = RequestStream(first=1)
    stream.send(2)
    stream.close()
    stream.send(3)  # ignored after close
    assert [x async for x in stream] == [1, 2]


def test_assemble_places_chunks_by_offset():
    a = ReplyAudio(0.0, 1, Audio(np.ones(100, np.float32), 1000, 0), 0)
    b = ReplyAudio(0.0, 1, Audio(np.ones(50, np.float32), 1000, 200_000), 200_000)
    out = assemble([a, b])
    assert len(out.samples) == 250 and out.samples[150] == 0 and out.samples[220] == 1
