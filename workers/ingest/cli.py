"""``pulse ingest <source>``: sources into posts.raw. Heavy imports happen inside the handlers."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from pulse.settings import Settings


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text}")
        return value

    return parse


def _common(parser: argparse.ArgumentParser, mapping: bool = True, metrics_port: bool = True) -> None:
    if metrics_port:  # the HTTP source serves /metrics and /healthz on its own port instead
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=None,
            help="port of /metrics and /healthz (default INGEST__METRICS_PORT; 0 = any, -1 = off)",
        )
    parser.add_argument(
        "--no-warm",
        action="store_true",
        help="do not read posts.raw's newest keys into the dedup window at start",
    )
    if mapping:
        parser.add_argument(
            "--platform", default=None, help="platform for records that do not name one (e.g. 'twitter')"
        )
        parser.add_argument(
            "--map",
            action="append",
            default=[],
            metavar="FIELD=SOURCE",
            help="read FIELD from SOURCE (a key or dotted path) in a foreign layout; repeat "
            "or comma-separate, e.g. --map text=body,author.id=user.id_str",
        )


def register(subparsers: argparse._SubParsersAction) -> None:
    dead = subparsers.add_parser(
        "dead-letters", help="print the dead letters on posts.dlq as JSON Lines (sealed originals on request)"
    )
    dead.add_argument(
        "--unseal",
        action="store_true",
        help="open sealed originals with PRIVACY__HMAC_KEY (ingest with pseudonymisation)",
    )
    dead.add_argument("--last", type=_positive(int), default=None, help="only the newest N")
    dead.set_defaults(handler=_dead_letters)

    ingest = subparsers.add_parser("ingest", help="publish posts from a source to posts.raw")
    sources = ingest.add_subparsers(dest="source", metavar="SOURCE", required=True)

    for name, helptext in (
        ("file", "replay a JSON Lines or CSV file ('-' for stdin)"),
        ("stdin", "read JSON Lines or CSV from standard input"),
    ):
        p = sources.add_parser(name, help=helptext)
        if name == "file":
            p.add_argument("path", help="file to read, or '-' for stdin")
        p.add_argument(
            "--format",
            choices=("jsonl", "csv"),
            default=None,
            help="input format (default: from the file name, else jsonl)",
        )
        pace = p.add_mutually_exclusive_group()
        pace.add_argument("--rate", type=_positive(float), default=None, help="posts per second")
        pace.add_argument(
            "--speed",
            type=_positive(float),
            default=None,
            help="replay at X times the original event-time pace",
        )
        p.add_argument(
            "--loop",
            action="store_true",
            help="start over at the end; each pass gets new ids ('#<pass>') and later event times",
        )
        p.add_argument(
            "--retime",
            action="store_true",
            help="replay as new traffic: the first post happens now, and ids get '~<start time>'",
        )
        p.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="progress line on stderr (default: when stderr is a terminal)",
        )
        _common(p)
        p.set_defaults(handler=_file)

    http = sources.add_parser("http", help="accept posts on POST /v1/posts (bearer token auth)")
    http.add_argument("--host", default=None, help="default INGEST__HTTP_HOST")
    http.add_argument("--port", type=int, default=None, help="default INGEST__HTTP_PORT (0 = any)")
    http.add_argument(
        "--no-auth", action="store_true", help="accept posts without a token (local demos only)"
    )
    _common(http, metrics_port=False)
    http.set_defaults(handler=_http)

    gen = sources.add_parser("generator", help="a synthetic, seeded stream for demos and load tests")
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--count", type=int, default=None, help="stop after this many posts (default: endless)")
    gen.add_argument(
        "--rate",
        type=_positive(float),
        default=None,
        help="posts per second in event time, and in wall time when publishing (default 50)",
    )
    gen.add_argument("--brands", default=None, help="comma-separated brand names")
    gen.add_argument("--hashtags", default=None, help="comma-separated extra hashtags")
    gen.add_argument(
        "--langs", default=None, help="comma-separated language:weight, e.g. en:0.7,es:0.2,de:0.1"
    )
    gen.add_argument(
        "--spike",
        action="append",
        default=[],
        metavar="BRAND@START+DURATION:SHARE",
        help="negative-sentiment spike: BRAND's negative share goes to SHARE from START for "
        "DURATION seconds of event time, e.g. Acme@600+300:0.7",
    )
    gen.add_argument("--start", default=None, help="event time of the first post (ISO 8601; default now)")
    gen.add_argument(
        "--no-lang",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="leave the language out of this fraction of posts (ingest detects it)",
    )
    gen.add_argument(
        "--out",
        default=None,
        help="write JSON Lines to this file ('-': stdout) instead of publishing, as fast as possible",
    )
    _common(gen, mapping=False)
    gen.set_defaults(handler=_generator)

    bsky = sources.add_parser("bluesky", help="the Bluesky Jetstream firehose (app.bsky.feed.post creates)")
    bsky.add_argument(
        "--url",
        default="wss://jetstream2.us-east.bsky.network/subscribe",
        help="Jetstream subscribe endpoint",
    )
    bsky.add_argument("--cursor", type=int, default=None, help="start at this time_us cursor (default: live)")
    _common(bsky, mapping=False)
    bsky.set_defaults(handler=_bluesky)

    masto = sources.add_parser("mastodon", help="a Mastodon instance's streaming API (SSE)")
    masto.add_argument("--instance", required=True, help="e.g. https://mastodon.social")
    masto.add_argument("--hashtag", default=None, help="the hashtag timeline instead of the public one")
    masto.add_argument("--local", action="store_true", help="only the instance's own posts")
    masto.add_argument(
        "--token-env",
        default="MASTODON_TOKEN",
        help="environment variable holding the access token (default MASTODON_TOKEN)",
    )
    _common(masto, mapping=False)
    masto.set_defaults(handler=_mastodon)


def _dead_letters(args: argparse.Namespace, settings: Settings) -> int:
    from workers.ingest import deadletters

    return deadletters.run(settings, unseal=args.unseal, last=args.last)


def _mapping(args: argparse.Namespace, csv: bool) -> Any:
    from workers.ingest.mapping import parse_mapping

    specs = getattr(args, "map", [])
    if not specs:
        return {} if csv else None  # CSV always goes through the mapper: its columns are flat
    return parse_mapping(specs)


def _file(args: argparse.Namespace, settings: Settings) -> int:
    from workers.ingest import app
    from workers.ingest.pacing import RatePacer, SpeedPacer
    from workers.ingest.publisher import PublishError
    from workers.ingest.records import Replay
    from workers.ingest.runner import Progress, Runner
    from workers.ingest.sources.file import FileSource, detect_format

    path = getattr(args, "path", "-")
    fmt = detect_format(None if path == "-" else path, args.format)
    try:
        mapping = _mapping(args, fmt == "csv")
    except ValueError as exc:
        print(f"pulse ingest: error: {exc}", file=sys.stderr)
        return 2
    if path != "-" and not os.path.isfile(path):
        print(f"pulse ingest: error: no such file: {path}", file=sys.stderr)
        return 2
    if args.loop and path == "-":
        print("pulse ingest: error: --loop needs a file, not stdin", file=sys.stderr)
        return 2
    replay = Replay().retimed(str(int(time.time()))) if args.retime else Replay()
    try:
        pipeline, publisher = app.pipeline(
            settings, args.platform, mapping, warm=not args.no_warm, success_reports=False, replay=replay
        )
    except (PublishError, ValueError) as exc:
        print(f"pulse ingest: error: {exc}", file=sys.stderr)
        return 2
    stop = app.serve(settings, args.metrics_port, publisher)
    batch = settings.ingest.batch_size
    pacer: RatePacer | SpeedPacer | None = None
    if args.rate:
        pacer, batch = RatePacer(args.rate), max(1, min(batch, int(args.rate // 10) or 1))
    elif args.speed:
        pacer, batch = SpeedPacer(args.speed), min(batch, 50)
    show = sys.stderr.isatty() if args.progress is None else args.progress
    runner = Runner(
        FileSource(path, fmt, batch),
        pipeline,
        publisher,
        pacer=pacer,
        loop=args.loop,
        progress=Progress() if show else None,
        stop=stop,
        flush_timeout=settings.ingest.flush_timeout_s,
    )
    return runner.run()


def _http(args: argparse.Namespace, settings: Settings) -> int:
    from workers.ingest.sources.http import serve

    return serve(
        settings,
        host=args.host,
        port=args.port,
        platform=args.platform,
        mapping=_mapping(args, csv=False),
        warm=not args.no_warm,
        no_auth=args.no_auth,
    )


def _generator(args: argparse.Namespace, settings: Settings) -> int:
    from workers.ingest.sources.generator import run_cli

    return run_cli(args, settings)


def _bluesky(args: argparse.Namespace, settings: Settings) -> int:
    from workers.ingest.sources.bluesky import JetstreamSource
    from workers.ingest.sources.firehose import run_firehose

    return run_firehose(JetstreamSource(args.url, cursor=args.cursor), args, settings)


def _mastodon(args: argparse.Namespace, settings: Settings) -> int:
    import os

    from workers.ingest.sources.firehose import run_firehose
    from workers.ingest.sources.mastodon import MastodonSource

    return run_firehose(
        MastodonSource(
            args.instance, hashtag=args.hashtag, local=args.local, token=os.environ.get(args.token_env)
        ),
        args,
        settings,
    )
