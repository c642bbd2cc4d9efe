"""Prometheus metrics specific to the LLM service (latencies go to ``parley_stage_latency_seconds``).

Stages observed there: ``ttft`` (request received -> first token), ``generation`` (request received ->
last token or cancel) and ``cancel_stop`` (llama.cpp: stop requested -> decode loop returned).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

CANCELLED = Counter(
    "parley_llm_cancelled_total",
    "Generations stopped before their end: reason=client (CancelGeneration) or call (RPC cancelled)",
    ["service", "reason"],
)
TOKENS_PER_SECOND = Histogram(
    "parley_llm_tokens_per_second",
    "Decode speed of one generation (tokens after the first / time since the first)",
    ["service"],
    buckets=(1, 2, 5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200, 300, 500, 1000),
)
COMPLETION_TOKENS = Counter("parley_llm_completion_tokens_total", "Tokens generated and streamed", ["service"])
