"""The real models: Silero VAD v6 and smart-turn v3.2 on onnxruntime, and their helpers."""

from __future__ import annotations

import importlib.util
import logging
import time

import numpy as np
import pytest

from services.turn.backends import build_end_of_turn, build_vad
from services.turn.backends.base import EOT_WINDOW_SAMPLES, fit_window, package_file
from services.turn.backends.features import log_mel
from services.turn.backends.silero import SileroVad
from services.turn.backends.smart_turn import SmartTurn
from services.turn.config import EndOfTurnConfig, VadConfig
from tests.turn.helpers import silence, speech_bounds, word_gaps

pytestmark = pytest.mark.models

FINISHED = "What is the capital of France?"
LONG = "So I went to the store and then I bought some apples and oranges for my mother."


def frame_probs(vad: SileroVad, samples: np.ndarray) -> np.ndarray:
    stream = vad.stream()
    return np.array([stream(samples[i : i + 512]) for i in range(0, len(samples) - 511, 512)])


def test_vad_speech_high_silence_and_noise_low(vad_model: SileroVad, speak) -> None:
    speech = speak("Hello, how are you today? I hope you are doing well.").samples
    first, last = speech_bounds(speech, 16_000)
    probs = frame_probs(vad_model, speech)
    voiced = probs[int(first * 16_000 / 512) + 2 : int(last * 16_000 / 512) - 2]
    assert probs.max() > 0.9
    assert np.mean(voiced > 0.5) > 0.7, f"speech frames over threshold: {np.mean(voiced > 0.5):.2f}"

    assert frame_probs(vad_model, silence(2.0)).max() < 0.1
    noise = (np.random.default_rng(3).standard_normal(32_000) * 0.1).astype(np.float32)
    noise_probs = frame_probs(vad_model, noise)
    assert np.mean(noise_probs > 0.5) < 0.05, f"white noise taken for speech: {noise_probs.max():.2f}"


def test_vad_state_is_per_stream(vad_model: SileroVad, speak) -> None:
    speech = speak("Testing one two three.").samples
    alone = frame_probs(vad_model, speech)
    a, b = vad_model.stream(), vad_model.stream()
    noise = np.random.default_rng(1).standard_normal(len(speech)).astype(np.float32) * 0.05
    interleaved = []
    for i in range(len(alone)):
        interleaved.append(a(speech[i * 512 : (i + 1) * 512]))
        b(noise[i * 512 : (i + 1) * 512])
    np.testing.assert_allclose(interleaved, alone, atol=1e-5)
    a.reset()
    np.testing.assert_allclose(a(speech[:512]), alone[0], atol=1e-5)
    with pytest.raises(ValueError, match="512"):
        a(speech[:100])


def test_vad_speed(vad_model: SileroVad) -> None:
    stream = vad_model.stream()
    frames = np.random.default_rng(0).standard_normal((200, 512)).astype(np.float32) * 0.1
    start = time.perf_counter()
    for frame in frames:
        stream(frame)
    per_frame_ms = (time.perf_counter() - start) / len(frames) * 1e3
    print(f"silero VAD: {per_frame_ms:.3f} ms per 32 ms frame")
    assert per_frame_ms < 5


def test_features_match_pipecat_reference() -> None:
    path = package_file("pipecat", "audio", "turn", "smart_turn", "_whisper_features.py")
    spec = importlib.util.spec_from_file_location("_pipecat_whisper_features", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # numpy only; does not import pipecat
    audio = fit_window(np.random.default_rng(5).standard_normal(40_000).astype(np.float32) * 0.2)
    ours = log_mel(audio)
    assert ours.shape == (80, 800) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, module.compute_whisper_log_mel_features(audio), atol=1e-5)


def test_fit_window_pads_front_and_keeps_the_end() -> None:
    short = np.ones(10, np.float32)
    out = fit_window(short)
    assert len(out) == EOT_WINDOW_SAMPLES and out[-10:].sum() == 10 and out[:-10].sum() == 0
    long = np.arange(EOT_WINDOW_SAMPLES + 5, dtype=np.float32)
    assert fit_window(long)[0] == 5


def test_smart_turn_finished_question_beats_cut_sentence(eot_model: SmartTurn, speak) -> None:
    pause = silence(0.2)  # the model runs after ~160-230 ms of silence in the service
    finished = speak(FINISHED).samples
    p_finished = eot_model.predict(np.concatenate([finished, pause]))

    # hibari renders any text as a finished sentence (final intonation), so "I would like to know
    # about the" on its own scores ~0.98. An unfinished turn is a longer sentence cut at a gap between
    # words in the middle of a phrase: the voice is still going on.
    long = speak(LONG).samples
    cuts = word_gaps(long, 16_000, 0.7, 2.6)
    assert len(cuts) >= 3
    p_cut = [eot_model.predict(np.concatenate([long[:c], pause])) for c in cuts]
    print(
        f"smart-turn: finished {p_finished:.3f}; cut mid-phrase at {[round(c / 16000, 2) for c in cuts]} s: "
        f"{[round(p, 3) for p in p_cut]}"
    )
    assert p_finished > 0.8
    assert float(np.median(p_cut)) < 0.3
    assert p_finished > max(p_cut)


def test_smart_turn_speed_and_long_input(eot_model: SmartTurn, speak) -> None:
    audio = np.tile(speak(FINISHED).samples, 5)  # > 8 s: only the end counts
    start = time.perf_counter()
    p = eot_model.predict(audio)
    ms = (time.perf_counter() - start) * 1e3
    print(f"smart-turn: {ms:.1f} ms per 8 s window (features + inference)")
    assert 0.0 <= p <= 1.0
    assert p == pytest.approx(eot_model.predict(audio[-EOT_WINDOW_SAMPLES:]), abs=1e-6)


def test_build_backends_and_missing_provider_falls_back(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="parley.turn.backends"):
        vad = build_vad(VadConfig(providers=["CUDAExecutionProvider", "CPUExecutionProvider"]))
    assert vad.session.get_providers() == ["CPUExecutionProvider"]
    assert any("not available" in r.getMessage() for r in caplog.records)
    eot = build_end_of_turn(EndOfTurnConfig(intra_op_threads=2))
    assert isinstance(eot, SmartTurn)


def test_wrong_model_file_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a smart-turn"):
        SmartTurn(model_path=package_file("silero_vad", "data", "silero_vad.onnx"))
    with pytest.raises(ValueError, match="not a Silero"):
        SileroVad(model_path=package_file("pipecat", "audio", "turn", "smart_turn", "data", "smart-turn-v3.2-cpu.onnx"))
    with pytest.raises(FileNotFoundError):
        package_file("no_such_package_here", "x.onnx")
