"""Errors that map to gRPC status codes, and helpers to abort streams with a clear message."""

from __future__ import annotations

import grpc


class ParleyError(Exception):
    """Base error carrying the gRPC status code it maps to."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidInput(ParleyError, ValueError):
    """The caller sent something malformed: maps to INVALID_ARGUMENT."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ParleyError, LookupError):
    """An id names nothing the caller may see: maps to NOT_FOUND."""

    code = grpc.StatusCode.NOT_FOUND


class Overloaded(ParleyError):
    """Too many concurrent sessions: maps to RESOURCE_EXHAUSTED."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class BackendUnavailable(ParleyError):
    """A model backend (remote endpoint, Triton) could not be reached: maps to UNAVAILABLE."""

    code = grpc.StatusCode.UNAVAILABLE


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a handler should abort with for ``exc``."""
    if isinstance(exc, ParleyError):
        return exc.code, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
