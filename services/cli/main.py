"""``parley`` command line: ``up``, ``down``, ``converse``.

    parley up [--demo]                         start Redis + all services, serve until Ctrl-C
    parley converse --audio q.wav --out r.wav  one spoken turn through the running stack (or a temporary one)
    parley down                                stop a stack started by ``parley up`` elsewhere
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
from pathlib import Path

from parley.audio import Audio, read_wav
from parley.errors import InvalidInput
from services.cli.control_commands import add_control_commands
from services.cli.converse import TurnResult, converse_once, save_reply
from services.cli.replica_commands import add_replica_commands
from services.cli.stack import VOICE_SERVICES, Stack, discover, stop_recorded

DEMO_QUESTION = "What is the capital of France?"


def _print_turn(result: TurnResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.summary(), indent=2))
        return
    print(f"session     {result.session_id}")
    print(f"you said    {result.transcript!r}")
    print(f"replica     {result.reply_text!r}")
    if result.error:
        print(f"error       {result.error}")
    print("latency (ms from the end of your speech):")
    for key, value in result.latency.items():
        print(f"  {key:<28} {value:>8.1f}")


def _run_turn(info, audio: Audio, out: str | None, replica: str | None = None) -> TurnResult:
    result = asyncio.run(converse_once(info.endpoints, info.redis_url, audio))
    if out:
        save_reply(result, out, replica)
    return result


def synthesize_question(text: str) -> Audio:
    """Speech for ``text`` from the bundled TTS voice (used by the demo)."""
    from hibari import SAMPLE_RATE, Hibari

    return Audio(Hibari()(text, seed=1), SAMPLE_RATE)


def open_conversation(info, tenant: str = "local") -> str:
    """Issue a local API key and create a conversation; returns its URL (the page to open)."""
    import redis.asyncio as aioredis

    from parley.client import ParleyClient
    from services.control.auth import KeyStore

    async def issue() -> str:
        client = aioredis.from_url(info.redis_url, decode_responses=True)
        try:
            return (await KeyStore(client).create(tenant, "parley up")).key
        finally:
            await client.aclose()

    with ParleyClient(info.endpoints["control"], asyncio.run(issue())) as parley:
        return parley.create_conversation(name="parley up", participant_join_timeout_s=24 * 3600).conversation_url


def cmd_up(args: argparse.Namespace) -> int:
    stack = Stack(run_dir=args.run_dir, config_path=args.config, http_port=args.http_port)
    print(f"starting Redis and the {', '.join(stack.services)} services ...", flush=True)
    info = stack.start()
    print(json.dumps({"redis": info.redis_url, "endpoints": info.endpoints, "metrics": info.metrics,
                      "web": info.urls}, indent=2))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if args.demo:
            run_dir = Path(args.run_dir)
            question = synthesize_question(args.demo_text)
            from parley.audio import write_wav

            write_wav(run_dir / "demo-question.wav", question.samples, question.sample_rate)
            print(f"\ndemo turn: asking {args.demo_text!r} by voice ...", flush=True)
            result = _run_turn(info, question, str(run_dir / "demo-reply.wav"))
            _print_turn(result, as_json=False)
            print(f"reply audio: {run_dir / 'demo-reply.wav'}")
            if result.reply_audio is not None and "renderer" in info.endpoints:
                video = save_reply(result, run_dir / "demo-reply.mp4")
                print(f"reply video: {video}")
        if "gateway" in info.urls and "control" in info.endpoints:
            url = open_conversation(info)
            print(f"\ntalk to the replica: open {url}\n(a browser on this machine; allow the microphone)",
                  flush=True)
        if args.exit_after_demo:
            return 0
        print("\nservices are up; `parley converse --audio question.wav --out reply.wav` talks to them. "
              "Ctrl-C stops.", flush=True)
        stop.wait()
    finally:
        codes = stack.stop()
        print(f"stopped: {codes}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    if stop_recorded(args.run_dir):
        print("asked the running stack to stop")
        return 0
    print("no running stack recorded in", args.run_dir)
    return 1


def cmd_converse(args: argparse.Namespace) -> int:
    try:
        audio = read_wav(args.audio)
    except (InvalidInput, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    info = discover(args.run_dir)
    if info is not None:
        result = _run_turn(info, audio, args.out, args.replica)
    else:
        print("no running stack found; starting one for this turn ...", file=sys.stderr, flush=True)
        with Stack(run_dir=args.run_dir, config_path=args.config, services=VOICE_SERVICES) as info:
            result = _run_turn(info, audio, args.out, args.replica)
    _print_turn(result, args.json)
    if not args.json and args.out and result.reply_audio is not None:
        print(f"reply audio: {args.out}")
    return 0 if not result.error and result.reply_text else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description="Parley conversational video interface")
    parser.add_argument("--run-dir", default=".parley", help="where the local stack keeps logs and stack.json")
    parser.add_argument("--config", default=None, help="YAML config file (else PARLEY_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start Redis and every service locally")
    up.add_argument("--demo", action="store_true", help="run one spoken demo turn once the services are up")
    up.add_argument("--demo-text", default=DEMO_QUESTION)
    up.add_argument("--exit-after-demo", action="store_true", help="stop after the demo (for scripts)")
    up.add_argument("--http-port", type=int, default=8080, help="the web client's port (0 = a free one)")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop a stack started by `parley up`")
    down.set_defaults(func=cmd_down)
    conv = sub.add_parser("converse", help="one spoken turn: question audio in, reply audio out")
    conv.add_argument("--audio", required=True, help="question as a WAV file")
    conv.add_argument("--out", default=None, help="reply.wav (audio) or reply.mp4 (the replica speaking it)")
    conv.add_argument("--replica", default=None, help="replica id for --out *.mp4 (default: the astronaut)")
    conv.add_argument("--json", action="store_true", help="print the result as JSON")
    conv.set_defaults(func=cmd_converse)
    add_replica_commands(sub)
    add_control_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
