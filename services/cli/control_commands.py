"""``parley`` subcommands of the control plane (hooked into services/cli/main.py by ``add_control_commands``).

    parley admin keys create --tenant acme            issue an API key (printed once) -- talks to Redis
    parley admin keys list --tenant acme | revoke KEY_ID
    parley personas create --name Tutor --system-prompt "..." [--greeting ...] [--layers '{"tts": {"speed": 1.1}}']
    parley personas list | get ID | delete ID
    parley replicas create --name Anna --photo anna.jpg   (waits, printing progress; --no-wait)
    parley replicas list | get ID | delete ID
    parley conversations create --persona P [--replica R] [--callback-url URL] [--max-duration 600] ...
    parley conversations list [--status active] | get ID | end ID
    parley events tail CONVERSATION_ID [--after EVENT_ID] [--no-follow] [--json]

API calls go to ``--address`` (``$PARLEY_API_ADDRESS``, default 127.0.0.1:50060) with ``--api-key``
(``$PARLEY_API_KEY``). ``admin`` commands use the control config's Redis (``--redis-url`` overrides).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from parley.client import JobFailed, ParleyAPIError, ParleyClient, to_dict
from parley.client._common import DEFAULT_ADDRESS


def _client(args: argparse.Namespace) -> ParleyClient:
    return ParleyClient(args.address, api_key=args.api_key or None)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max([len(c), *(len(str(r.get(c, ""))) for r in rows)]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns).rstrip())


def _short_status(value: str, prefix: str) -> str:
    return value.replace(prefix, "").lower()


def _run(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Map SDK errors to a message on stderr and exit code 1 (2 for bad arguments)."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except ParleyAPIError as exc:
            print(f"error: {exc.code.name}: {exc.message}", file=sys.stderr)
            return 2 if exc.code.name == "INVALID_ARGUMENT" else 1
        except JobFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except (ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return wrapper


# -- personas ---------------------------------------------------------------------------------------------
def _read_text(value: str | None, path: str | None) -> str:
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read()
    return value or ""


@_run
def personas_create(args: argparse.Namespace) -> int:
    layers = json.loads(args.layers) if args.layers else None
    with _client(args) as parley:
        persona = parley.create_persona(
            args.name, system_prompt=_read_text(args.system_prompt, args.system_prompt_file),
            context=_read_text(args.context, args.context_file), greeting=args.greeting or "",
            default_replica_id=args.default_replica or "", layers=layers)
    _print_json(to_dict(persona))
    return 0


@_run
def personas_list(args: argparse.Namespace) -> int:
    with _client(args) as parley:
        page = parley.list_personas(args.page_size, args.page_token)
    if args.json:
        _print_json({"personas": [to_dict(p) for p in page.items], "next_page_token": page.next_page_token})
        return 0
    _table([{"id": p.persona_id, "name": p.name, "replica": p.default_replica_id, "greeting": p.greeting[:40]}
            for p in page.items], ["id", "name", "replica", "greeting"])
    if page.next_page_token:
        print(f"more: --page-token {page.next_page_token}")
    return 0


@_run
def personas_get(args: argparse.Namespace) -> int:
    with _client(args) as parley:
        _print_json(to_dict(parley.get_persona(args.id)))
    return 0


@_run
def personas_delete(args: argparse.Namespace) -> int:
    with _client(args) as parley:
        parley.delete_persona(args.id)
    print(f"deleted {args.id}")
    return 0


# -- replicas ---------------------------------------------------------------------------------------------
@_run
def replicas_create(args: argparse.Namespace) -> int:
    with _client(args) as parley:
        replica, job = parley.create_replica(args.name, args.photo)
        print(f"replica {replica.replica_id}: build job {job.job_id} queued", file=sys.stderr, flush=True)
        if not args.no_wait:
            def progress(fraction: float, message: str) -> None:
                print(f"  {fraction * 100:5.1f}%  {message}", file=sys.stderr, flush=True)

            parley.wait_for_job(job.job_id, progress, timeout=args.timeout)
            replica = parley.get_replica(replica.replica_id)
    _print_json(to_dict(replica))
    return 0


@_run
def replicas_list(args: argparse.Namespace) -> int:
    with _client(args) as parley:
        page = parley.list_replicas(args.page_size, args.page_token)
    if args.json:
        _print_json({"replicas": [to_dict(r) for r in page.items], "next_page_token": page.next_page_token})
        return 0
    _table([{"id": r.replica_id, "name": r.name, "status": _short_status(
        type(r).DESCRIPTOR.fields_by_name["status"].enum_type.values_by_number[r.status].name, "REPLICA_STATUS_"),
        "error": r.error[:40]} for r in page.items], ["id", "name", "status", "error"])
    return 0


@_run
def replicas_get(args: argparse.Namespace) -> int:
    with _client(args) as parley:
        _print_json(to_dict(parley.get_replica(args.id)))
    return 0


@_run
def replicas_delete(args: argparse.Namespace) -> int:
    with _client(args) as parley:
        parley.delete_replica(args.id)
    print(f"deleted {args.id}")
    return 0


# -- conversations ----------------------------------------------------------------------------------------
@_run
def conversations_create(args: argparse.Namespace) -> int:
    with _client(args) as parley:
        conv = parley.create_conversation(
            args.persona or "", args.replica or "", name=args.name or "", callback_url=args.callback_url or "",
            max_duration_s=args.max_duration, participant_join_timeout_s=args.join_timeout,
            participant_absent_timeout_s=args.absent_timeout, custom_greeting=args.greeting or "",
            conversational_context=args.context or "")
    _print_json(to_dict(conv))
    return 0


@_run
def conversations_list(args: argparse.Namespace) -> int:
    with _client(args) as parley:
        page = parley.list_conversations(args.status, args.page_size, args.page_token)
    if args.json:
        _print_json({"conversations": [to_dict(c) for c in page.items], "next_page_token": page.next_page_token})
        return 0
    rows = []
    for c in page.items:
        status = type(c).DESCRIPTOR.fields_by_name["status"].enum_type.values_by_number[c.status].name
        rows.append({"id": c.conversation_id, "status": _short_status(status, "CONVERSATION_STATUS_"),
                     "name": c.name, "persona": c.persona_id, "end_reason": c.end_reason})
    _table(rows, ["id", "status", "name", "persona", "end_reason"])
    if page.next_page_token:
        print(f"more: --page-token {page.next_page_token}")
    return 0


@_run
def conversations_get(args: argparse.Namespace) -> int:
    with _client(args) as parley:
        _print_json(to_dict(parley.get_conversation(args.id)))
    return 0


@_run
def conversations_end(args: argparse.Namespace) -> int:
    with _client(args) as parley:
        _print_json(to_dict(parley.end_conversation(args.id)))
    return 0


# -- events -----------------------------------------------------------------------------------------------
@_run
def events_tail(args: argparse.Namespace) -> int:
    with _client(args) as parley:
        try:
            for event in parley.events(args.conversation_id, args.after, follow=not args.no_follow):
                if args.json:
                    print(json.dumps({"event_id": event.event_id, "event_type": event.event_type,
                                      "timestamp": event.timestamp,
                                      "properties": json.loads(event.properties_json or "{}")}), flush=True)
                else:
                    print(f"{event.event_id:<18} {event.event_type:<40} {event.properties_json}", flush=True)
        except KeyboardInterrupt:
            return 130
    return 0


# -- admin ------------------------------------------------------------------------------------------------
def _admin_store(args: argparse.Namespace) -> tuple[str, str]:
    from services.control.config import load_control_config

    config = load_control_config(getattr(args, "config", None))
    return args.redis_url or config.server.redis_url, args.prefix or config.key_prefix


def _with_keys(args: argparse.Namespace, fn: Callable[[Any], Any]) -> Any:
    import redis.asyncio as aioredis

    from services.control.auth import KeyStore

    url, prefix = _admin_store(args)

    async def main() -> Any:
        client = aioredis.from_url(url, decode_responses=True)
        try:
            return await fn(KeyStore(client, prefix))
        finally:
            await client.aclose()

    return asyncio.run(main())


@_run
def admin_keys_create(args: argparse.Namespace) -> int:
    issued = _with_keys(args, lambda keys: keys.create(args.tenant, args.name or ""))
    if args.json:
        _print_json({"api_key": issued.key, "key_id": issued.key_id, "tenant": issued.tenant,
                     "webhook_secret": issued.webhook_secret})
    else:
        print(f"tenant          {issued.tenant}")
        print(f"key id          {issued.key_id}")
        print(f"api key         {issued.key}")
        print(f"webhook secret  {issued.webhook_secret}")
        print("store the API key now: it is kept only as a hash and cannot be shown again", file=sys.stderr)
    return 0


@_run
def admin_keys_list(args: argparse.Namespace) -> int:
    rows = _with_keys(args, lambda keys: keys.list(args.tenant))
    _table(rows, ["key_id", "tenant", "name", "created_at", "revoked"])
    return 0


@_run
def admin_keys_revoke(args: argparse.Namespace) -> int:
    if not _with_keys(args, lambda keys: keys.revoke(args.key_id)):
        print(f"error: no key {args.key_id}", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id}")
    return 0


# -- parser -----------------------------------------------------------------------------------------------
def _api(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--address", default=os.environ.get("PARLEY_API_ADDRESS", DEFAULT_ADDRESS),
                        help="control service host:port (env PARLEY_API_ADDRESS)")
    parser.add_argument("--api-key", default=os.environ.get("PARLEY_API_KEY", ""),
                        help="API key (env PARLEY_API_KEY)")
    return parser


def _paged(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--page-size", type=int, default=0)
    parser.add_argument("--page-token", default="")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def add_control_commands(subparsers: Any) -> None:
    """Add ``personas``, ``replicas``, ``conversations``, ``events`` and ``admin`` to the ``parley`` parser."""
    personas = subparsers.add_parser("personas", help="create, list, show and delete personas")
    psub = personas.add_subparsers(dest="personas_command", required=True)
    p = _api(psub.add_parser("create", help="create a persona"))
    p.add_argument("--name", required=True)
    p.add_argument("--system-prompt")
    p.add_argument("--system-prompt-file", help="read the system prompt from a file")
    p.add_argument("--context")
    p.add_argument("--context-file")
    p.add_argument("--greeting")
    p.add_argument("--default-replica", help="replica id used when a conversation names none")
    p.add_argument("--layers", help='per-layer config as JSON, e.g. \'{"llm": {"model": "m"}, "tts": {"speed": 1.1}}\'')
    p.set_defaults(func=personas_create)
    _paged(_api(psub.add_parser("list", help="list personas"))).set_defaults(func=personas_list)
    for name, func in (("get", personas_get), ("delete", personas_delete)):
        p = _api(psub.add_parser(name, help=f"{name} a persona"))
        p.add_argument("id")
        p.set_defaults(func=func)

    replicas = subparsers.add_parser("replicas", help="build replicas from photos; list, show, delete")
    rsub = replicas.add_subparsers(dest="replicas_command", required=True)
    p = _api(rsub.add_parser("create", help="build a replica from a photo"))
    p.add_argument("--name", required=True)
    p.add_argument("--photo", required=True, help="JPEG / PNG / WebP with one front-facing face")
    p.add_argument("--no-wait", action="store_true", help="return once the build is queued")
    p.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")
    p.set_defaults(func=replicas_create)
    _paged(_api(rsub.add_parser("list", help="list replicas"))).set_defaults(func=replicas_list)
    for name, func in (("get", replicas_get), ("delete", replicas_delete)):
        p = _api(rsub.add_parser(name, help=f"{name} a replica"))
        p.add_argument("id")
        p.set_defaults(func=func)

    convs = subparsers.add_parser("conversations", help="create, list, show and end conversations")
    csub = convs.add_subparsers(dest="conversations_command", required=True)
    p = _api(csub.add_parser("create", help="create a conversation and print its join URL"))
    p.add_argument("--persona")
    p.add_argument("--replica")
    p.add_argument("--name")
    p.add_argument("--callback-url", help="webhook target for its events")
    p.add_argument("--max-duration", type=float, default=0, help="seconds (0 = default)")
    p.add_argument("--join-timeout", type=float, default=0, help="seconds to wait for a participant (0 = default)")
    p.add_argument("--absent-timeout", type=float, default=0, help="seconds everyone may be away (0 = default)")
    p.add_argument("--greeting", help="custom greeting")
    p.add_argument("--context", help="extra conversational context")
    p.set_defaults(func=conversations_create)
    p = _paged(_api(csub.add_parser("list", help="list conversations")))
    p.add_argument("--status", choices=["waiting", "active", "ended"])
    p.set_defaults(func=conversations_list)
    for name, func in (("get", conversations_get), ("end", conversations_end)):
        p = _api(csub.add_parser(name, help=f"{name} a conversation"))
        p.add_argument("id")
        p.set_defaults(func=func)

    events = subparsers.add_parser("events", help="a conversation's events")
    esub = events.add_subparsers(dest="events_command", required=True)
    p = _api(esub.add_parser("tail", help="print events as they happen (until the conversation ends)"))
    p.add_argument("conversation_id")
    p.add_argument("--after", default="", help="resume after this event id ('$' = only new events)")
    p.add_argument("--no-follow", action="store_true", help="print what is there and exit")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=events_tail)

    admin = subparsers.add_parser("admin", help="operator commands (talk to Redis directly)")
    asub = admin.add_subparsers(dest="admin_command", required=True)
    keys = asub.add_parser("keys", help="API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)

    def _redis(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--redis-url", default=None, help="default: the control config's server.redis_url")
        parser.add_argument("--prefix", default=None, help="Redis key prefix (default: control.key_prefix)")
        return parser

    p = _redis(ksub.add_parser("create", help="issue an API key for a tenant (printed once)"))
    p.add_argument("--tenant", required=True)
    p.add_argument("--name", help="a label for the key")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=admin_keys_create)
    p = _redis(ksub.add_parser("list", help="a tenant's keys (ids only)"))
    p.add_argument("--tenant", required=True)
    p.set_defaults(func=admin_keys_list)
    p = _redis(ksub.add_parser("revoke", help="revoke a key by id"))
    p.add_argument("key_id")
    p.set_defaults(func=admin_keys_revoke)
