"""Conversation events: stream entries -> API messages and webhook bodies."""

from __future__ import annotations

import json
import math
from typing import Any

from parley.v1 import control_pb2 as pb
from services.control import streams


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return 0.0
    return out if math.isfinite(out) else 0.0


def _utterance(data: dict[str, Any]) -> pb.Utterance:
    return pb.Utterance(role=str(data.get("role", ""))[:32], text=str(data.get("text", "")),
                        start_time=_num(data.get("start_time")), end_time=_num(data.get("end_time")))


def to_proto(conversation_id: str, entry_id: str, fields: dict[str, Any]) -> pb.ConversationEvent:
    """The API form of one events-stream entry (never raises on malformed host data)."""
    kind, data, ts = streams.decode_entry(fields)
    event = pb.ConversationEvent(event_id=entry_id, conversation_id=conversation_id, event_type=kind,
                                 timestamp=ts or entry_time(entry_id),
                                 properties_json=json.dumps(data, separators=(",", ":"), default=str))
    try:
        if kind == streams.UTTERANCE:
            event.utterance.CopyFrom(_utterance(data))
        elif kind == streams.TOOL_CALL:
            args = data.get("arguments_json", data.get("arguments", ""))
            event.tool_call.CopyFrom(pb.ToolCall(
                call_id=str(data.get("call_id", "")), name=str(data.get("name", "")),
                arguments_json=args if isinstance(args, str) else json.dumps(args)))
        elif kind.startswith("system."):
            event.system.CopyFrom(pb.SystemEvent(reason=str(data.get("reason", "")),
                                                 participant_id=str(data.get("participant_id", ""))))
        elif kind == streams.TRANSCRIPTION_READY:
            items = data.get("transcript") or []
            event.transcription.CopyFrom(pb.TranscriptionReady(
                transcript=[_utterance(u) for u in items if isinstance(u, dict)]))
    except (ValueError, TypeError):
        pass  # properties_json still carries everything
    return event


def entry_time(entry_id: str) -> float:
    try:
        return int(entry_id.split("-", 1)[0]) / 1000.0
    except ValueError:
        return 0.0


def webhook_body(conversation_id: str, entry_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The JSON posted to a callback URL for one event."""
    kind, data, ts = streams.decode_entry(fields)
    return {"event_id": entry_id, "event_type": kind, "conversation_id": conversation_id,
            "timestamp": ts or entry_time(entry_id), "properties": data}
