"""The two model interfaces the turn detector needs, and onnxruntime helpers shared by implementations.

* :class:`VadModel` - voice activity: :meth:`VadModel.stream` gives a :class:`VadStream` holding one
  session's recurrent state; calling it with one 512-sample 16 kHz frame gives P(speech).
* :class:`EndOfTurnModel` - turn completion: :meth:`EndOfTurnModel.predict` takes up to 8 s of 16 kHz
  audio (the end of the user's turn) and gives P(the user has finished). It is called from a worker
  thread, so implementations must be thread-safe.
"""

from __future__ import annotations

import importlib.util
import logging
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

log = logging.getLogger("parley.turn.backends")

SAMPLE_RATE = 16_000
VAD_FRAME_SAMPLES = 512
"""Samples per VAD frame at 16 kHz (32 ms): the frame size Silero VAD v5/v6 expects."""
EOT_WINDOW_SECONDS = 8.0
EOT_WINDOW_SAMPLES = int(EOT_WINDOW_SECONDS * SAMPLE_RATE)


class VadStream(ABC):
    """One session's VAD state (recurrent state, context samples)."""

    @abstractmethod
    def __call__(self, frame: np.ndarray) -> float:
        """Speech probability in [0, 1] of one frame of ``VAD_FRAME_SAMPLES`` float32 samples at 16 kHz."""

    @abstractmethod
    def reset(self) -> None:
        """Forget the state (as at the start of a stream)."""


class VadModel(ABC):
    """A voice activity detector shared by all sessions; per-session state lives in :class:`VadStream`."""

    frame_samples: int = VAD_FRAME_SAMPLES
    sample_rate: int = SAMPLE_RATE

    @abstractmethod
    def stream(self) -> VadStream:
        """Fresh per-session state."""

    def close(self) -> None:
        """Release resources (no-op by default)."""
        return None


class EndOfTurnModel(ABC):
    """A turn-completion model shared by all sessions (called concurrently from worker threads)."""

    sample_rate: int = SAMPLE_RATE
    window_samples: int = EOT_WINDOW_SAMPLES

    @abstractmethod
    def predict(self, audio: np.ndarray) -> float:
        """P(turn complete) for float32 16 kHz ``audio`` ending now (longer input uses its last 8 s)."""

    async def wait_ready(self) -> None:
        """Block until the model can answer (remote backends); local models are ready when built."""
        return None

    def close(self) -> None:
        """Release resources (no-op by default)."""
        return None


def fit_window(audio: np.ndarray, samples: int = EOT_WINDOW_SAMPLES) -> np.ndarray:
    """The last ``samples`` of ``audio``, zero-padded at the front to exactly ``samples`` (float32)."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if len(audio) >= samples:
        return audio[-samples:]
    return np.concatenate([np.zeros(samples - len(audio), np.float32), audio])


def package_file(package: str, *parts: str) -> Path:
    """Path of a data file inside an installed package, found without importing the package.

    (``silero_vad`` imports torch and ``pipecat`` imports its own dependencies on import; we need only
    their data files.)
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"python package {package!r} is not installed")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {package!r} package")
    return path


def onnx_session(path: str | Path, providers: list[str], intra_op_threads: int = 1):  # -> ort.InferenceSession
    """An onnxruntime session on the first available of ``providers`` (CPU as the last resort)."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    chosen = [p for p in providers if p in available]
    missing = [p for p in providers if p not in available]
    if missing:
        log.warning(
            "onnxruntime execution providers not available, skipped",
            extra={"missing": missing, "available": sorted(available), "model": str(path)},
        )
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=chosen)
