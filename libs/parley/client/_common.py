"""Pieces shared by the async and sync clients: errors, request builders, metadata."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf import field_mask_pb2, json_format

from parley.v1 import common_pb2
from parley.v1 import control_pb2 as pb

T = TypeVar("T")

DEFAULT_ADDRESS = "127.0.0.1:50060"
ProgressCallback = Callable[[float, str], None]


class ParleyAPIError(Exception):
    """An RPC failed; ``code`` is the gRPC status code, ``message`` the server's explanation."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class AuthenticationError(ParleyAPIError):
    """UNAUTHENTICATED: missing, wrong or revoked API key."""


class NotFoundError(ParleyAPIError):
    """NOT_FOUND: no such resource for this API key's tenant."""


class InvalidArgumentError(ParleyAPIError):
    """INVALID_ARGUMENT: the request was malformed; the message names the field."""


class FailedPreconditionError(ParleyAPIError):
    """FAILED_PRECONDITION: e.g. the conversation has ended, the replica is not ready."""


class JobFailed(Exception):
    """A job (replica build) ended in FAILED."""

    def __init__(self, job: pb.Job) -> None:
        super().__init__(f"job {job.job_id} failed: {job.error}")
        self.job = job


_ERRORS = {
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
}


def api_error(exc: grpc.RpcError) -> ParleyAPIError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return _ERRORS.get(code, ParleyAPIError)(code, details or "")


@dataclass
class Page(Generic[T]):
    """One page of a list call."""

    items: list[T] = field(default_factory=list)
    next_page_token: str = ""


def resolve_key(api_key: str | None) -> str:
    key = api_key if api_key is not None else os.environ.get("PARLEY_API_KEY", "")
    if not key:
        raise ValueError("an API key is required: pass api_key= or set PARLEY_API_KEY")
    return key


def metadata(api_key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),)


def photo_bytes(photo: str | os.PathLike[str] | bytes) -> bytes:
    if isinstance(photo, (bytes, bytearray, memoryview)):
        return bytes(photo)
    return Path(photo).read_bytes()


def layers_message(layers: Mapping[str, Any] | pb.PersonaLayers | None) -> pb.PersonaLayers:
    if layers is None:
        return pb.PersonaLayers()
    if isinstance(layers, pb.PersonaLayers):
        return layers
    return json_format.ParseDict(dict(layers), pb.PersonaLayers())


PERSONA_FIELDS = ("name", "system_prompt", "context", "default_replica_id", "greeting")


def persona_message(persona_id: str = "", layers: Mapping[str, Any] | pb.PersonaLayers | None = None,
                    **fields: Any) -> pb.Persona:
    unknown = set(fields) - set(PERSONA_FIELDS)
    if unknown:
        raise TypeError(f"unknown persona field(s): {', '.join(sorted(unknown))}")
    persona = pb.Persona(persona_id=persona_id, **{k: v for k, v in fields.items() if v is not None})
    if layers is not None:
        persona.layers.CopyFrom(layers_message(layers))
    return persona


def layer_paths(layers: Mapping[str, Any]) -> list[str]:
    """Mask paths for a nested ``layers`` dict: ``{"llm": {"model": "m"}}`` -> ``["layers.llm.model"]``."""
    paths: list[str] = []
    for layer, value in layers.items():
        if not isinstance(value, Mapping):
            paths.append(f"layers.{layer}")
            continue
        for name, sub in value.items():
            if layer == "llm" and name == "sampling" and isinstance(sub, Mapping):
                paths.extend(f"layers.llm.sampling.{k}" for k in sub)
            else:
                paths.append(f"layers.{layer}.{name}")
    return paths


def update_request(persona_id: str, fields: dict[str, Any]) -> pb.UpdatePersonaRequest:
    """An UpdatePersonaRequest whose mask names exactly what ``fields`` sets (``layers`` as nested dicts)."""
    layers = fields.pop("layers", None)
    persona = persona_message(persona_id, layers, **fields)
    paths = list(fields)
    if isinstance(layers, pb.PersonaLayers):
        paths.append("layers")
    elif layers is not None:
        paths.extend(layer_paths(layers))
    return pb.UpdatePersonaRequest(persona=persona, update_mask=field_mask_pb2.FieldMask(paths=paths))


STATUS_NAMES = {"waiting": pb.CONVERSATION_STATUS_WAITING, "active": pb.CONVERSATION_STATUS_ACTIVE,
                "ended": pb.CONVERSATION_STATUS_ENDED}


def conversation_status(status: str | int | None) -> int:
    if status is None or status == "":
        return 0
    if isinstance(status, int):
        return status
    try:
        return STATUS_NAMES[status.lower()]
    except KeyError:
        raise ValueError(f"status must be one of {', '.join(STATUS_NAMES)}") from None


def echo_request(conversation_id: str, text: str | None, audio: bytes | None, sample_rate: int,
                 encoding: str) -> pb.InteractRequest:
    enc = {"pcm_s16le": common_pb2.AUDIO_ENCODING_PCM_S16LE, "pcm_f32le": common_pb2.AUDIO_ENCODING_PCM_F32LE}
    if encoding not in enc:
        raise ValueError("encoding must be pcm_s16le or pcm_f32le")
    echo = pb.Echo(text=text or "")
    if audio is not None:
        echo.audio.CopyFrom(common_pb2.AudioFrame(data=audio, sample_rate=sample_rate, channels=1,
                                                  encoding=enc[encoding]))
    return pb.InteractRequest(conversation_id=conversation_id, echo=echo)


def to_dict(message: Any) -> dict[str, Any]:
    """A message as a JSON-friendly dict (field names as in the proto)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)
