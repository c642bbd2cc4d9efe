"""Prioritized, bounded access to the backend."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from services.asr.backends.base import AsrBackend, Recognition
from services.asr.decoder import Decoder, Priority, PriorityGate


async def test_gate_serves_finals_first_and_survives_cancellation() -> None:
    gate = PriorityGate(1)
    await gate.acquire(Priority.PARTIAL)
    order: list[str] = []

    async def waiter(name: str, priority: Priority) -> None:
        await gate.acquire(priority)
        order.append(name)
        gate.release()

    tasks = [
        asyncio.create_task(waiter("partial", Priority.PARTIAL)),
        asyncio.create_task(waiter("early", Priority.EARLY_FINAL)),
        asyncio.create_task(waiter("cancelled", Priority.FINAL)),
        asyncio.create_task(waiter("final", Priority.FINAL)),
    ]
    await asyncio.sleep(0.01)
    tasks[2].cancel()
    await asyncio.sleep(0.01)
    gate.release()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == ["final", "early", "partial"]
    await asyncio.wait_for(gate.acquire(Priority.PARTIAL), 1)  # no slot leaked


class _Slow(AsrBackend):
    concurrency = 1

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.lock = threading.Lock()

    def transcribe(self, samples: np.ndarray, language: str, word_timestamps: bool) -> Recognition:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(0.05)
        with self.lock:
            self.running -= 1
        return Recognition(f"{len(samples)}", [], 0.05, language)


async def test_decoder_never_exceeds_backend_concurrency_even_when_callers_cancel() -> None:
    backend = _Slow()
    decoder = Decoder(backend)
    calls = [asyncio.create_task(decoder.decode(np.zeros(i + 1), "en", False, Priority.PARTIAL)) for i in range(4)]
    await asyncio.sleep(0.02)
    calls[0].cancel()  # running in the worker: its slot stays taken until the thread is done
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert [r.text for r in results[1:]] == ["2", "3", "4"]
    assert backend.peak == 1
    decoder.close()


async def test_decoder_propagates_backend_errors() -> None:
    class Broken(AsrBackend):
        def transcribe(self, samples, language, word_timestamps):  # noqa: ANN001, ANN201
            raise RuntimeError("boom")

    decoder = Decoder(Broken())
    with pytest.raises(RuntimeError, match="boom"):
        await decoder.decode(np.zeros(10), "en", True, Priority.FINAL)
    assert (await asyncio.wait_for(decoder.gate.acquire(0), 1)) is None
    decoder.close()
