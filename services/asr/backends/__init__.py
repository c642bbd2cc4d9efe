"""ASR backends behind one interface (:class:`AsrBackend`) and the factory that picks one from config."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import SAMPLE_RATE, AsrBackend, Recognition, Word

if TYPE_CHECKING:
    from ..config import AsrServiceConfig

__all__ = ["SAMPLE_RATE", "AsrBackend", "Recognition", "Word", "make_backend"]


def make_backend(config: AsrServiceConfig) -> AsrBackend:
    """The backend named by ``config.backend`` (not loaded yet: call ``load()`` off the event loop)."""
    if config.backend == "remote":
        from .remote import RemoteBackend

        r = config.remote
        return RemoteBackend(
            r.base_url, r.api_key, r.model, r.timeout_s, r.max_concurrency, temperature=config.temperature[0]
        )
    from .faster_whisper_backend import FasterWhisperBackend

    return FasterWhisperBackend(
        model_path=config.model_path,
        device=config.device,
        device_index=config.device_index,
        compute_type=config.compute_type,
        cpu_threads=config.cpu_threads,
        num_workers=config.num_workers,
        beam_size=config.beam_size,
        temperature=config.temperature,
        without_timestamps=config.without_timestamps,
    )
