"""Service bootstrap: a grpc.aio server with health, reflection, Prometheus metrics and graceful drain.

A stage service builds a :class:`ServiceApp`, registers its servicers, and calls :func:`run_service`.
Stream handlers use :meth:`ServiceApp.stream` to get uniform error mapping, admission control
(max concurrent streams), session checks against Redis, and stream metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from parley import metrics
from parley.config import ServerConfig
from parley.errors import Overloaded, ParleyError, status_for
from parley.log import bind, setup_logging, unbind
from parley.session_store import SessionStore, validate_session_id

log = logging.getLogger("parley.bootstrap")

Hook = Callable[[], Awaitable[None]]


class ServiceApp:
    """One gRPC service process: server, health, reflection, metrics endpoint, drain on SIGTERM."""

    def __init__(self, name: str, config: ServerConfig) -> None:
        self.name = name
        self.config = config
        self.server: grpc.aio.Server | None = None  # created in start(), inside the serving event loop
        self.health = HealthServicer()
        self.service_names: list[str] = []
        self._servicers: list[tuple[Callable[[Any, grpc.aio.Server], None], Any]] = []
        self.port = 0
        self.metrics_port = 0
        self.sessions: SessionStore | None = None
        self._active = 0
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self._metrics_httpd: Any = None
        metrics.set_service(name)

    def add_service(self, full_name: str, add_fn: Callable[[Any, grpc.aio.Server], None], servicer: Any) -> None:
        """Register a servicer (``add_XServicer_to_server``) under its full proto name."""
        self._servicers.append((add_fn, servicer))
        self.service_names.append(full_name)

    def on_startup(self, hook: Hook) -> None:
        """Run ``hook`` (e.g. load and warm up a model) before the service reports SERVING."""
        self._startup.append(hook)

    def on_shutdown(self, hook: Hook) -> None:
        """Run ``hook`` after in-flight streams have drained."""
        self._shutdown.append(hook)

    async def start(self) -> None:
        """Bind, run start-up hooks, then report SERVING for every registered service."""
        if self.config.nice:
            os.nice(self.config.nice)
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.config.max_message_bytes),
                ("grpc.max_send_message_length", self.config.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        for add_fn, servicer in self._servicers:
            add_fn(servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME],
            self.server,
        )
        self.port = self.server.add_insecure_port(f"{self.config.host}:{self.config.port}")
        if not self.port:
            raise RuntimeError(f"cannot bind {self.config.host}:{self.config.port}")
        self._metrics_httpd, _ = start_http_server(self.config.metrics_port, addr=self.config.host)
        self.metrics_port = self._metrics_httpd.server_port
        for name in ("", *self.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        if self.config.check_sessions:
            self.sessions = SessionStore(self.config.redis_url)
        try:
            for hook in self._startup:
                await hook()
        except BaseException:
            await self.server.stop(0)  # a failed start must not leave a half-started server behind
            if self._metrics_httpd is not None:
                self._metrics_httpd.shutdown()
            raise
        for name in ("", *self.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"port": self.port, "metrics_port": self.metrics_port})

    async def drain(self) -> None:
        """Report NOT_SERVING, stop accepting streams, let in-flight ones finish (up to drain_seconds)."""
        log.info("draining", extra={"grace_s": self.config.drain_seconds, "active": self._active})
        await self.health.enter_graceful_shutdown()
        await asyncio.sleep(self.config.drain_notice_seconds)  # let probes and balancers see NOT_SERVING
        await self.server.stop(self.config.drain_seconds)
        for hook in self._shutdown:
            with contextlib.suppress(Exception):
                await hook()
        if self.sessions:
            await self.sessions.close()
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
        log.info("stopped")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        """Serve inside the current event loop (tests, embedding); yields ``host:port``; drains on exit."""
        await self.start()
        try:
            yield f"{self.config.host}:{self.port}"
        finally:
            await self.drain()

    async def check_session(self, session_id: str) -> None:
        """Raise InvalidInput / NotFound unless the session exists in the store."""
        validate_session_id(session_id)
        if self.sessions is not None:
            await self.sessions.require(session_id)

    async def stream(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        body: Callable[[], AsyncIterator[Any]],
    ) -> AsyncIterator[Any]:
        """Run a server-streaming body with admission control, metrics and error mapping.

        ParleyError subclasses abort the call with their status code and message; anything else
        aborts with INTERNAL; client cancellation is counted as CANCELLED.
        """
        code = "OK"
        metrics.STREAMS_ACTIVE.labels(self.name, method).inc()
        token = bind(method=method)
        try:
            if self._active >= self.config.max_sessions:
                raise Overloaded(f"{self.name} is at its limit of {self.config.max_sessions} concurrent streams")
            self._active += 1
            try:
                async for item in body():
                    metrics.STREAM_MESSAGES.labels(self.name, method, "out").inc()
                    yield item
            finally:
                self._active -= 1
        except (asyncio.CancelledError, GeneratorExit):
            # gRPC cancels the handler task, or closes this generator while it waits to send.
            code = "CANCELLED"
            raise
        except ParleyError as exc:
            status, message = status_for(exc)
            code = status.name
            log.info("stream rejected", extra={"code": code, "error": message})
            await context.abort(status, message)
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                code = "ABORTED"
                raise
            status, message = status_for(exc)
            code = status.name
            log.exception("stream failed")
            await context.abort(status, message)
        finally:
            metrics.STREAMS_ACTIVE.labels(self.name, method).dec()
            metrics.STREAMS_TOTAL.labels(self.name, method, code).inc()
            with contextlib.suppress(ValueError):  # a generator closed from another context
                unbind(token)


def run_service(app: ServiceApp) -> None:
    """Process entry point: start ``app``, print a JSON ready line, serve until SIGTERM/SIGINT, drain."""
    setup_logging(app.name)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await app.start()
        sys.stdout.write(
            json.dumps({"event": "ready", "service": app.name, "port": app.port, "metrics_port": app.metrics_port})
            + "\n"
        )
        sys.stdout.flush()
        await stop.wait()
        await app.drain()

    asyncio.run(main())
