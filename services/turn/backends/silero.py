"""Silero VAD v6 run directly with onnxruntime (the ONNX file shipped in the ``silero-vad`` wheel).

The v5/v6 model is recurrent: each call takes ``[context(64) + frame(512)]`` samples at 16 kHz plus a
``state`` tensor of shape (2, 1, 128) and returns P(speech) and the next state. The 64-sample context
is the tail of the previous call's input (zeros at the start), as in silero's own ``OnnxWrapper``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.turn.backends.base import SAMPLE_RATE, VAD_FRAME_SAMPLES, VadModel, VadStream, onnx_session, package_file

CONTEXT_SAMPLES = 64
STATE_SHAPE = (2, 1, 128)


def default_model_path() -> Path:
    """``silero_vad/data/silero_vad.onnx`` from the installed silero-vad package (v6 in silero-vad 6.x)."""
    return package_file("silero_vad", "data", "silero_vad.onnx")


class SileroVadStream(VadStream):
    """Recurrent state and context of one session."""

    def __init__(self, model: SileroVad) -> None:
        self._model = model
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros(STATE_SHAPE, np.float32)
        self._context = np.zeros((1, CONTEXT_SAMPLES), np.float32)

    def __call__(self, frame: np.ndarray) -> float:
        frame = np.asarray(frame, dtype=np.float32).reshape(1, -1)
        if frame.shape[1] != VAD_FRAME_SAMPLES:
            raise ValueError(f"silero VAD takes {VAD_FRAME_SAMPLES}-sample frames, got {frame.shape[1]}")
        x = np.concatenate([self._context, frame], axis=1)
        prob, self._state = self._model.session.run(None, {"input": x, "state": self._state, "sr": self._model.sr})
        self._context = x[:, -CONTEXT_SAMPLES:]
        return float(prob[0, 0])


class SileroVad(VadModel):
    """One onnxruntime session shared by every stream (``run`` is thread-safe, state is per stream)."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        providers: list[str] | None = None,
        intra_op_threads: int = 1,
    ) -> None:
        self.model_path = Path(model_path) if model_path else default_model_path()
        self.session = onnx_session(self.model_path, providers or ["CPUExecutionProvider"], intra_op_threads)
        self.sr = np.array(SAMPLE_RATE, dtype=np.int64)
        names = {i.name for i in self.session.get_inputs()}
        if names != {"input", "state", "sr"}:
            raise ValueError(f"{self.model_path} is not a Silero VAD v5/v6 model (inputs {sorted(names)})")

    def stream(self) -> SileroVadStream:
        return SileroVadStream(self)
