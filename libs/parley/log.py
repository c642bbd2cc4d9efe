"""Structured (JSON lines) logging with per-session context.

``bind(session_id=..., trace_id=...)`` sets context variables that every log record in the current
task (and tasks it starts) carries.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
from typing import Any

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("parley_log_context", default=None)


def bind(**fields: Any) -> contextvars.Token:
    """Add fields to the log context of the current task; returns a token for ``unbind``."""
    return _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v not in (None, "")}})


def unbind(token: contextvars.Token) -> None:
    """Restore the context that was current before ``bind``."""
    _context.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, context fields and ``extra=`` fields."""

    _skip = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_context.get() or {})
        for key, value in record.__dict__.items():
            if key not in self._skip and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(service: str, level: str | None = None) -> None:
    """Route the root logger to stderr as JSON lines (level from ``PARLEY_LOG_LEVEL``, default INFO)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("PARLEY_LOG_LEVEL", "INFO")).upper())
