"""Runs backend decodes off the event loop, at most ``backend.concurrency`` at once, finals first.

Every session shares one :class:`Decoder`. Waiting happens on the event loop (a priority gate), not in
worker threads, so a final that arrives while partials of other sessions are queued goes next.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from concurrent.futures import ThreadPoolExecutor
from enum import IntEnum

import numpy as np

from .backends.base import AsrBackend, Recognition


class Priority(IntEnum):
    """Lower runs first."""

    FINAL = 0
    EARLY_FINAL = 1
    PARTIAL = 2


class PriorityGate:
    """An asyncio semaphore whose waiters are served lowest priority value first, FIFO within one."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._free = capacity
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        """Waiters not yet served (including cancelled ones not yet popped)."""
        return sum(1 for _, _, f in self._waiters if not f.done())

    async def acquire(self, priority: int) -> None:
        """Wait for a slot; cancellation while waiting gives up the place in the queue."""
        if self._free > 0:  # release() only frees a slot when nobody is waiting
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (int(priority), next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed to us just as we were cancelled
            else:
                fut.cancel()
            raise

    def release(self) -> None:
        """Hand the slot to the best waiter, or free it."""
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
                return
        self._free += 1


class Decoder:
    """Shared, prioritized access to one backend from many sessions."""

    def __init__(self, backend: AsrBackend) -> None:
        self.backend = backend
        self.gate = PriorityGate(max(1, backend.concurrency))
        self._pool = ThreadPoolExecutor(max_workers=self.gate.capacity, thread_name_prefix="asr-decode")

    async def run_sync(self, fn, *args):  # noqa: ANN001, ANN201 - thin executor helper
        """Run a blocking call (load, warm-up) on the decode threads."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def decode(
        self, samples: np.ndarray, language: str, word_timestamps: bool, priority: Priority
    ) -> Recognition:
        """Transcribe ``samples`` (16 kHz float32) once a slot is free.

        If the caller is cancelled while the backend runs, the slot stays taken until the worker
        thread really finishes, so the configured concurrency is never exceeded.
        """
        await self.gate.acquire(priority)
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._pool, self.backend.transcribe, samples, language, word_timestamps)
        except BaseException:
            self.gate.release()
            raise
        future.add_done_callback(self._finished)
        return await asyncio.shield(future)

    def _finished(self, future: asyncio.Future[Recognition]) -> None:
        self.gate.release()
        if not future.cancelled():
            future.exception()  # retrieved here so an abandoned decode's error is not logged as unhandled

    def close(self) -> None:
        """Stop the worker threads (after running decodes finish) and release the backend."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.backend.close()
