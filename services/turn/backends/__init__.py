"""Model backends of the turn service, chosen by config: :func:`build_vad`, :func:`build_end_of_turn`."""

from __future__ import annotations

from services.turn.backends.base import EndOfTurnModel, VadModel, VadStream
from services.turn.config import EndOfTurnConfig, VadConfig


def build_vad(config: VadConfig) -> VadModel:
    """The VAD named by ``config.backend`` (loads the model)."""
    if config.backend == "silero":
        from services.turn.backends.silero import SileroVad

        return SileroVad(config.model_path, config.providers, config.intra_op_threads)
    raise ValueError(f"unknown VAD backend {config.backend!r}")


def build_end_of_turn(config: EndOfTurnConfig) -> EndOfTurnModel:
    """The end-of-turn model named by ``config.backend`` (loads it, or connects lazily for Triton)."""
    if config.backend == "smart_turn":
        from services.turn.backends.smart_turn import SmartTurn

        return SmartTurn(config.model_path, config.providers, config.intra_op_threads)
    if config.backend == "triton":
        from services.turn.backends.triton import TritonSmartTurn

        return TritonSmartTurn(config.triton)
    raise ValueError(f"unknown end-of-turn backend {config.backend!r}")


__all__ = ["EndOfTurnModel", "VadModel", "VadStream", "build_end_of_turn", "build_vad"]
