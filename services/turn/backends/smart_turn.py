"""smart-turn v3.2 end-of-turn model run locally with onnxruntime.

The int8 CPU ONNX file ships in the ``pipecat-ai`` wheel (installed ``--no-deps``) as
``pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx``; it is loaded by path, without importing
pipecat. Input: ``input_features`` float32 [batch, 80, 800] (Whisper log-mel of the last 8 s of 16 kHz
audio, zero-padded at the front, see :mod:`services.turn.backends.features`); output: ``logits``
[batch, 1], which is already a sigmoid probability that the turn is complete.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.turn.backends.base import EndOfTurnModel, fit_window, onnx_session, package_file
from services.turn.backends.features import N_FRAMES, N_MELS, log_mel

INPUT_NAME = "input_features"
OUTPUT_NAME = "logits"


def default_model_path() -> Path:
    """The smart-turn v3.2 CPU model shipped in the installed pipecat-ai package."""
    return package_file("pipecat", "audio", "turn", "smart_turn", "data", "smart-turn-v3.2-cpu.onnx")


def features(audio: np.ndarray) -> np.ndarray:
    """Model input [1, 80, 800] for 16 kHz ``audio`` (its last 8 s, zero-padded at the front)."""
    return log_mel(fit_window(audio))[None]


class SmartTurn(EndOfTurnModel):
    """smart-turn v3.x on onnxruntime; one session shared by all worker threads."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        providers: list[str] | None = None,
        intra_op_threads: int = 1,
    ) -> None:
        self.model_path = Path(model_path) if model_path else default_model_path()
        self.session = onnx_session(self.model_path, providers or ["CPUExecutionProvider"], intra_op_threads)
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        shape = inputs.get(INPUT_NAME)
        if shape is None or list(shape[1:]) != [N_MELS, N_FRAMES]:
            raise ValueError(f"{self.model_path} is not a smart-turn v3 model (inputs {inputs})")

    def predict(self, audio: np.ndarray) -> float:
        (prob,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: features(audio)})
        return float(np.clip(prob.reshape(-1)[0], 0.0, 1.0))
