"""Frame schedulers: how pixels get made. Every render session awaits one per frame.

* :class:`ThreadScheduler` (cpu backend): each session's frame renders on a shared pool of threads.
* :class:`BatchScheduler` (gsplat, or forced): one loop gathers every session's frame of a tick into one
  ``FaceRenderer.render_batch`` call.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from parley import metrics
from services.renderer.controls import Controls


class FrameScheduler(abc.ABC):
    """Turns (renderer, controls) into an image off the event loop."""

    aligned = False
    """True when sessions should start their frame clocks on a shared tick grid (so their requests meet)."""

    @abc.abstractmethod
    async def render(self, renderer: Any, controls: Controls, post: Callable[[np.ndarray], Any] | None = None) -> Any:
        """The rendered image (``post(image)`` when given), computed off the event loop."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release worker threads (schedulers that own some override this)."""


class ThreadScheduler(FrameScheduler):
    """cpu backend: each session's frame renders on a shared pool of worker threads."""

    def __init__(self, threads: int) -> None:
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="render")

    def _job(self, renderer: Any, controls: Controls, post: Callable[[np.ndarray], Any] | None) -> Any:
        t0 = time.perf_counter()
        image = renderer.render(controls)
        metrics.observe("render_frame", time.perf_counter() - t0)
        return post(image) if post else image

    async def render(self, renderer: Any, controls: Controls, post: Callable[[np.ndarray], Any] | None = None) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._job, renderer, controls, post)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Request:
    renderer: Any
    controls: Controls
    post: Callable[[np.ndarray], Any] | None
    future: asyncio.Future[Any]


class BatchScheduler(FrameScheduler):
    """gsplat backend: one render loop gathers every session's frame request of a tick into one
    ``render_batch`` call (one GPU launch for all faces).

    The loop takes the first waiting request, then collects more for up to ``window_s`` (or until every
    active session has asked, or ``max_batch``), renders them together on a worker thread, and resolves
    each session's future. Sessions keep their own pacing, but start their frame clocks on a shared grid
    of ``1 / fps`` ticks (``aligned``): each renders frame ``k`` right after sending frame ``k - 1`` at its
    due time, so sessions of the same fps ask at the same instants and land in one batch.
    """

    aligned = True

    def __init__(self, render_batch: Callable[[list[tuple[Any, Controls]]], list[np.ndarray]], window_s: float,
                 max_batch: int, active: Callable[[], int]) -> None:
        self.render_batch = render_batch
        self.window_s = window_s
        self.max_batch = max_batch
        self.active = active
        self.queue: asyncio.Queue[_Request] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="render-batch")
        self._task: asyncio.Task[None] | None = None
        self.batches: collections.Counter[int] = collections.Counter()  # batch size -> count (tests, tuning)

    async def render(self, renderer: Any, controls: Controls, post: Callable[[np.ndarray], Any] | None = None) -> Any:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop())
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(_Request(renderer, controls, post, future))
        return await future

    def _job(self, batch: list[_Request]) -> list[Any]:
        t0 = time.perf_counter()
        images = self.render_batch([(r.renderer, r.controls) for r in batch])
        seconds = time.perf_counter() - t0
        metrics.observe("render_batch", seconds)
        for _ in batch:
            metrics.observe("render_frame", seconds / len(batch))
        return [r.post(img) if r.post else img for r, img in zip(batch, images, strict=True)]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.window_s
            while len(batch) < min(self.max_batch, max(1, self.active())):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            batch = [r for r in batch if not r.future.done()]  # a cancelled session's request
            if not batch:
                continue
            self.batches[len(batch)] += 1
            try:
                results = await loop.run_in_executor(self.executor, self._job, batch)
            except Exception as exc:
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            for r, result in zip(batch, results, strict=True):
                if not r.future.done():
                    r.future.set_result(result)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)
