"""Prometheus metrics shared by every service (one process = one service label)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0)

STAGE_LATENCY = Histogram(
    "parley_stage_latency_seconds",
    "Latency of one unit of stage work (model inference, first token, first audio ...)",
    ["service", "stage"],
    buckets=LATENCY_BUCKETS,
)
STREAMS_ACTIVE = Gauge("parley_streams_active", "Streams currently open", ["service", "method"])
STREAMS_TOTAL = Counter(
    "parley_streams_total", "Streams ended, by final status code", ["service", "method", "code"]
)
STREAM_MESSAGES = Counter(
    "parley_stream_messages_total", "Messages received and sent on streams", ["service", "method", "direction"]
)

_service = "unknown"


def set_service(name: str) -> None:
    """Label every metric this process records with ``name``."""
    global _service
    _service = name


def service_name() -> str:
    return _service


def observe(stage: str, seconds: float) -> None:
    """Record one latency sample for ``stage`` of this service."""
    STAGE_LATENCY.labels(_service, stage).observe(seconds)


@contextmanager
def timed(stage: str) -> Iterator[None]:
    """Time the enclosed block into the stage latency histogram."""
    start = time.perf_counter()
    try:
        yield
    finally:
        observe(stage, time.perf_counter() - start)
