"""The Redis contract between the control service and the session host that runs a conversation.

The control service never talks to a session host directly: both sides meet in Redis. ``prefix`` is
``parley:`` by default (``control.key_prefix``). Everything below is plain Redis, so a host in any
language can follow it; this module is the Python reference (sync and asyncio clients both work, with
``decode_responses=True``).

Conversation record (written by the control service, read by the host)
    ``{prefix}control:conv:{id}``  hash. Host-relevant fields:
        ``status``        waiting | active | ended
        ``spec``          JSON: {system_prompt, context, greeting, replica_id, persona_id,
                          layers: {llm: {backend, base_url, model, api_key, sampling, tools}, tts, asr,
                          turn_taking, perception}} -- the persona resolved at creation, with the
                          conversation's custom greeting / extra context already applied
        ``max_duration_s``, ``created_at``, ``joined_at``, ``ended_at``, ``end_reason``
    ``{prefix}session:{id}``  the session-store record (``parley.session_store``) for the stage services;
                          the conversation id is the session id.

Interactions in (control service -> host): stream ``{prefix}conv:{id}:interactions``
    Every entry has the fields ``type`` (below), ``data`` (a JSON object) and ``ts`` (Unix seconds).
    Read with ``XREAD BLOCK <ms> STREAMS {key} <last id>`` starting from ``0`` (or from ``$`` to skip
    what was sent before the host started). Types and ``data``:
        ``echo``               {"text": str} or {"audio_b64": str, "sample_rate": int,
                               "encoding": "pcm_s16le" | "pcm_f32le"} -- speak exactly this, no LLM
        ``respond``            {"text": str} -- treat as the user's utterance
        ``interrupt``          {} -- stop speaking now
        ``overwrite_context``  {"context": str} -- replace the conversation's extra LLM context
        ``append_context``     {"context": str} -- add to it
        ``set_emotion``        {"emotion": "neutral"|"joy"|"sorrow"|"anger"|"surprise", "intensity": float 0..1}
        ``end``                {"reason": str} -- the conversation ended: leave the call and stop

Events out (host -> control service -> API clients and webhooks): stream ``{prefix}conv:{id}:events``
    Same entry shape: ``type``, ``data`` (JSON object), ``ts``. XADD them as they happen (use
    :func:`publish_event`). Types the API models (other types pass through as JSON):
        ``conversation.utterance``                 {"role": "user"|"replica", "text", "start_time", "end_time"}
        ``conversation.user.started_speaking``     {}   (and ``.stopped_speaking``)
        ``conversation.replica.started_speaking``  {}   (and ``.stopped_speaking``)
        ``conversation.tool_call``                 {"call_id", "name", "arguments_json"}
        ``system.replica_joined``                  {}   the replica is in the call
        ``system.participant_joined``              {"participant_id": str}  -- presence: drives the
        ``system.participant_left``                {"participant_id": str}     join / absence timeouts
        ``system.shutdown``                        {"reason": str} -- the host ended the call itself
    The control service adds ``system.shutdown`` (reason ``ended_by_api``, ``max_duration``,
    ``join_timeout``, ``participant_absent``) when it ends a conversation, then
    ``application.transcription_ready`` {"transcript": [utterances]} built from the utterance events.
    Events XADDed within a short grace period after the end are still delivered.
"""

from __future__ import annotations

import json
import time
from typing import Any

DEFAULT_PREFIX = "parley:"

INTERACTION_TYPES = ("echo", "respond", "interrupt", "overwrite_context", "append_context", "set_emotion", "end")

UTTERANCE = "conversation.utterance"
USER_STARTED = "conversation.user.started_speaking"
USER_STOPPED = "conversation.user.stopped_speaking"
REPLICA_STARTED = "conversation.replica.started_speaking"
REPLICA_STOPPED = "conversation.replica.stopped_speaking"
TOOL_CALL = "conversation.tool_call"
REPLICA_JOINED = "system.replica_joined"
PARTICIPANT_JOINED = "system.participant_joined"
PARTICIPANT_LEFT = "system.participant_left"
SHUTDOWN = "system.shutdown"
TRANSCRIPTION_READY = "application.transcription_ready"

STREAM_MAXLEN = 10_000  # approximate cap per conversation stream


def interactions_key(conversation_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}conv:{conversation_id}:interactions"


def events_key(conversation_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}conv:{conversation_id}:events"


def conversation_key(conversation_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}control:conv:{conversation_id}"


def entry(kind: str, data: dict[str, Any] | None = None, ts: float | None = None) -> dict[str, str]:
    """The fields of one stream entry."""
    return {"type": kind, "data": json.dumps(data or {}, separators=(",", ":")),
            "ts": repr(time.time() if ts is None else ts)}


def decode_entry(fields: dict[Any, Any]) -> tuple[str, dict[str, Any], float]:
    """``(type, data, ts)`` of a stream entry; tolerant of missing or malformed fields."""
    fields = {(k.decode() if isinstance(k, bytes) else k): (v.decode(errors="replace") if isinstance(v, bytes) else v)
              for k, v in fields.items()}
    kind = str(fields.get("type", ""))
    try:
        data = json.loads(fields.get("data") or "{}")
    except ValueError:
        data = {"raw": fields.get("data")}
    if not isinstance(data, dict):
        data = {"value": data}
    try:
        ts = float(fields.get("ts", 0) or 0)
    except ValueError:
        ts = 0.0
    return kind, data, ts


def publish_event(redis: Any, conversation_id: str, kind: str, data: dict[str, Any] | None = None,
                  prefix: str = DEFAULT_PREFIX) -> Any:
    """XADD one event (sync client: returns the id; asyncio client: returns an awaitable of it)."""
    return redis.xadd(events_key(conversation_id, prefix), entry(kind, data), maxlen=STREAM_MAXLEN, approximate=True)


def read_interactions(redis: Any, conversation_id: str, last_id: str = "0", block_ms: int | None = None,
                      count: int = 100, prefix: str = DEFAULT_PREFIX) -> Any:
    """XREAD interactions after ``last_id`` (sync client). Returns ``[(entry_id, type, data)]``."""
    reply = redis.xread({interactions_key(conversation_id, prefix): last_id}, count=count, block=block_ms)
    out = []
    for _key, entries in reply or []:
        for entry_id, fields in entries:
            kind, data, _ts = decode_entry(fields)
            out.append((entry_id.decode() if isinstance(entry_id, bytes) else entry_id, kind, data))
    return out
