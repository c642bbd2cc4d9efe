"""``parley replica build|list|delete``: manage replicas in the local replica store."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from parley.errors import InvalidInput, NotFound


def _progress_printer(stream=sys.stderr):
    """A one-line text progress bar for ``progress(fraction, message)`` callbacks."""
    started = time.monotonic()

    def progress(fraction: float, message: str) -> None:
        width = 30
        filled = int(round(width * max(0.0, min(1.0, fraction))))
        bar = "#" * filled + "-" * (width - filled)
        stream.write(f"\r[{bar}] {100 * fraction:5.1f}% {time.monotonic() - started:6.1f}s {message[:40]:<40}")
        stream.flush()
        if fraction >= 1.0:
            stream.write("\n")

    return progress


def cmd_build(args: argparse.Namespace) -> int:
    from services.renderer.replica import ReplicaStore

    try:
        photo = Path(args.photo).read_bytes()
    except OSError as exc:
        print(f"error: cannot read {args.photo}: {exc}", file=sys.stderr)
        return 2
    replica_id = args.id or Path(args.photo).stem
    store = ReplicaStore(args.replica_dir)
    try:
        store.build(photo, replica_id, progress=_progress_printer(), source=str(args.photo))
    except InvalidInput as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    print(f"replica {replica_id!r} saved to {store.path(replica_id)}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from services.renderer.replica import ReplicaStore

    for replica_id in ReplicaStore(args.replica_dir).list():
        print(replica_id)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from services.renderer.replica import ReplicaStore

    try:
        ReplicaStore(args.replica_dir).delete(args.replica_id)
    except NotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"deleted {args.replica_id}")
    return 0


def add_replica_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``parley replica ...``."""
    replica = subparsers.add_parser("replica", help="build and manage replicas (faces)")
    replica.add_argument("--replica-dir", default=None, help="replica store (default $PARLEY_REPLICA_DIR or cache)")
    sub = replica.add_subparsers(dest="replica_command", required=True)
    build = sub.add_parser("build", help="build a replica from one photo of a face")
    build.add_argument("--photo", required=True, help="JPEG/PNG with one face")
    build.add_argument("--id", default=None, help="replica id (default: the photo's file name)")
    build.set_defaults(func=cmd_build)
    listing = sub.add_parser("list", help="list stored replicas")
    listing.set_defaults(func=cmd_list)
    delete = sub.add_parser("delete", help="delete a stored replica")
    delete.add_argument("replica_id")
    delete.set_defaults(func=cmd_delete)
