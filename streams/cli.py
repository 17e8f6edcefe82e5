"""`pulse streams` and `pulse streams rebuild`: argparse wiring; faust loads in the handler."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pulse.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    streams = subparsers.add_parser(
        "streams",
        help="count posts.enriched into the trend store in Redis (faust); 'rebuild' recomputes it",
        description="One streams process in the group STREAMS__GROUP_ID; run N of them to share the "
        "partitions. SIGTERM finishes the batch in hand and exits 0.",
    )
    streams.add_argument("--http-port", type=int, default=None, help="port of /metrics and /healthz (0: any)")
    streams.set_defaults(handler=_run)
    actions = streams.add_subparsers(dest="action", metavar="ACTION")
    rebuild = actions.add_parser(
        "rebuild",
        help="recompute the trend store from posts.enriched (after Redis lost its data)",
        description="Stop the streams processes first. Reads posts.enriched from --from (retention "
        "permitting) to its current end and counts it into an empty store; the stage then resumes "
        "from where the rebuild stopped.",
    )
    rebuild.add_argument(
        "--from",
        dest="since",
        default=None,
        help="event time to start from (ISO 8601, e.g. 2026-12-01T09:00:00Z, or 'earliest'; "
        "default: earliest)",
    )
    rebuild.add_argument(
        "--wipe",
        action="store_true",
        help="delete what the store holds first (without it, rebuild refuses a store that has counts)",
    )
    rebuild.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    rebuild.set_defaults(handler=_rebuild)


def _with_port(settings: Settings, args: argparse.Namespace) -> Settings:
    if args.http_port is None:
        return settings
    section = settings.streams.model_copy(update={"http_port": args.http_port})
    return settings.model_copy(update={"streams": section})


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from streams.app import run

    return run(_with_port(settings, args))


def _rebuild(args: argparse.Namespace, settings: Settings) -> int:
    from streams.rebuild import RebuildError, rebuild

    try:
        return rebuild(settings, since=args.since, wipe=args.wipe, progress=args.progress)
    except RebuildError as exc:
        print(f"pulse streams rebuild: error: {exc}", file=sys.stderr)
        return 2
