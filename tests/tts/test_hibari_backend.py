"""hibari backend with the real model: audio, duration-predictor timings checked against energy and Whisper."""

from __future__ import annotations

import re
from itertools import pairwise

import numpy as np
import pytest

from parley.audio import resample, rms_dbfs
from parley.errors import InvalidInput
from services.tts.backends.onnx_outputs import add_output
from services.tts.timings import SILENCE, original_words, token_words

pytestmark = pytest.mark.models

SENTENCE = "The capital of France is Paris, a lovely city on the river Seine."


def words_of(text: str) -> list[str]:
    return [w.strip(".,!?;:\"'").lower() for w in text.split() if w.strip(".,!?;:\"'")]


def span(audio, rate, start_us, end_us):
    return audio[int(start_us * rate / 1e6) : int(end_us * rate / 1e6)]


def test_audio_is_speech_at_a_sane_level(hibari_backend):
    syn = hibari_backend.synthesize(SENTENCE)
    assert syn.sample_rate == 24_000
    assert syn.audio.dtype == np.float32
    assert 2.5 < len(syn.audio) / syn.sample_rate < 6.0
    assert -35 < rms_dbfs(syn.audio) < -8
    assert float(np.max(np.abs(syn.audio))) <= 1.0


def test_phonemes_tile_the_audio_exactly(hibari_backend):
    for speed in (0.8, 1.0, 1.5):
        syn = hibari_backend.synthesize(SENTENCE, speed=speed)
        ph = syn.phonemes
        assert ph[0].start_us == 0
        assert abs(ph[-1].end_us - syn.duration_us) <= 25_000  # within one duration frame
        assert sum(p.end_us - p.start_us for p in ph) == ph[-1].end_us  # contiguous, no overlap
        assert all(a.end_us == b.start_us for a, b in pairwise(ph))
        assert all(p.end_us > p.start_us for p in ph)
        assert {p.label for p in ph} - {SILENCE} <= set("ðəkæpTᵊlʌvfɹnsɪzɛɐisOAIWYɑɔʊuhmdbtgwjʃʒθŋʧʤ")


def test_words_one_per_spoken_word_in_order(hibari_backend):
    syn = hibari_backend.synthesize(SENTENCE)
    assert [w.label for w in syn.words] == [w.strip(",.") for w in SENTENCE.split()]
    assert all(w.end_us > w.start_us for w in syn.words)
    assert all(a.end_us <= b.start_us for a, b in pairwise(syn.words))
    assert syn.words[-1].end_us <= syn.duration_us


def test_timings_follow_the_audio(hibari_backend):
    """The comma is a real pause between words, and every word's span holds speech energy."""
    syn = hibari_backend.synthesize(SENTENCE)
    rate = syn.sample_rate
    by = {w.label: w for w in syn.words}
    gap = by["a"].start_us - by["Paris"].end_us
    assert gap >= 100_000, gap
    assert rms_dbfs(span(syn.audio, rate, by["Paris"].end_us, by["a"].start_us)) < -50
    for w in syn.words:
        assert rms_dbfs(span(syn.audio, rate, w.start_us, w.end_us)) > -40, w
    # Speed stretches the timeline: a slower reading puts the same word later.
    slow = hibari_backend.synthesize(SENTENCE, speed=0.7)
    assert slow.words[-1].start_us > 1.2 * syn.words[-1].start_us


def test_timings_line_up_with_whisper_word_timestamps(hibari_backend, whisper):
    """Round trip through a real ASR: the words come back, at about the times the TTS reported."""
    text = "She sells sea shells by the sea shore, while the children play football outside."
    syn = hibari_backend.synthesize(text)
    segments, _ = whisper.transcribe(
        resample(syn.audio, syn.sample_rate, 16_000), language="en", beam_size=1, word_timestamps=True
    )
    heard = [w for s in segments for w in s.words]
    heard_text = re.sub(r"[^a-z ]", " ", " ".join(w.word.lower() for w in heard))
    assert "".join(heard_text.split()) == "".join(words_of(text))  # "seashells" == "sea shells"
    ours = {w.label.lower(): w.start_us / 1e6 for w in syn.words}
    diffs = [abs(ours[k] - w.start) for w in heard if (k := w.word.strip(" ,.").lower()) in ours]
    assert len(diffs) >= 8
    assert float(np.median(diffs)) < 0.2, diffs


def test_normalized_text_maps_back_to_the_written_words(hibari_backend):
    text = "Dr. Smith paid $9.99 at 7:30 pm, didn't he?"
    syn = hibari_backend.synthesize(text)
    assert [w.label for w in syn.words] == ["Dr", "Smith", "paid", "$9.99", "at", "7:30", "pm", "didn't", "he"]
    by = {w.label: w for w in syn.words}
    # "$9.99" is read as nine words ("nine dollars and ninety nine cents"): by far the longest span.
    assert by["$9.99"].end_us - by["$9.99"].start_us > 3 * (by["Smith"].end_us - by["Smith"].start_us)


def test_token_words_handles_replaced_stretches():
    from hibari.g2p.normalize import normalize

    original = "Meet at 7:30 pm on 3/4/2024."
    norm = normalize(original)
    tokens = norm.replace(",", " ,").replace(".", " .").split()
    labels = [w[0] for w in original_words(original)]
    mapped = [labels[i] if i >= 0 else None for i in token_words(original, norm, tokens, normalize)]
    assert mapped[:4] == ["Meet", "at", "7:30", "7:30"]  # "seven thirty"
    assert mapped[-1] is None  # the final "."


def test_long_clause_is_split_for_the_model(hibari_backend):
    text = " ".join(["The quick brown fox jumps over the lazy dog"] * 12)  # > 400 phoneme symbols
    syn = hibari_backend.synthesize(text)
    assert len(syn.words) == 108
    assert all(a.end_us <= b.start_us for a, b in pairwise(syn.words))
    assert syn.phonemes[-1].end_us == syn.duration_us


def test_empty_and_unspeakable_text(hibari_backend):
    assert len(hibari_backend.synthesize("").audio) == 0
    assert len(hibari_backend.synthesize(" ... ").audio) == 0


def test_voices(hibari_backend):
    assert hibari_backend.check_voice("") == "heart"
    assert hibari_backend.check_voice("heart") == "heart"
    with pytest.raises(InvalidInput, match="not installed"):
        hibari_backend.check_voice("emma")  # a real hibari voice, but it would need a download
    with pytest.raises(InvalidInput, match="unknown voice"):
        hibari_backend.check_voice("nobody")


def test_add_output_exposes_the_duration_tensor():
    import onnxruntime as ort
    from hibari.voices import voice_path

    with open(voice_path("heart"), "rb") as f:
        raw = f.read()
    sess = ort.InferenceSession(add_output(raw, "/Cast_32_output_0"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()][-1] == "/Cast_32_output_0"
    ids = np.asarray([[0, 50, 83, 156, 0]], np.int64)
    out = sess.run(None, {"ids": ids, "speed": np.asarray([1.0], np.float32)})
    durations = out[-1].reshape(-1)
    assert len(durations) == ids.shape[1]
    assert out[0].shape[-1] == 2 * int(durations.sum())  # vocoder frames = 2 per duration unit


def test_a_model_without_the_duration_tensor_fails_at_load_with_a_clear_message():
    from services.tts.backends.hibari_backend import HibariBackend
    from services.tts.config import HibariConfig

    with pytest.raises(RuntimeError, match="cannot expose duration tensor '/nope'"):
        HibariBackend(HibariConfig(duration_tensor="/nope")).load()
