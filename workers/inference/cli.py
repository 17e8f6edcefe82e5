"""`pulse infer`: argparse wiring; Kafka clients and ONNX Runtime load inside the handler only."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pulse.settings import Settings
    from workers.inference.protocols import PostModel
    from workers.inference.watchlist import Watchlist

log = logging.getLogger("pulse.inference")


def register(subparsers: argparse._SubParsersAction) -> None:
    infer = subparsers.add_parser(
        "infer",
        help="consume posts.raw, add sentiment, entities and watchlist matches, produce posts.enriched",
        description="One inference worker in the consumer group INFERENCE__GROUP_ID; run N of them to "
        "share the partitions. SIGTERM drains what is in flight and exits 0.",
    )
    infer.add_argument(
        "--providers",
        default=None,
        help="ONNX Runtime providers in order, comma-separated (default: INFERENCE__PROVIDERS)",
    )
    infer.add_argument("--device-id", type=int, default=None, help="GPU to pin this worker to")
    infer.add_argument(
        "--require-gpu",
        action="store_true",
        default=None,
        help="exit at start when the session would run on CPU",
    )
    infer.add_argument("--batch-size", type=int, default=None, help="max records per consumed batch")
    infer.add_argument(
        "--model-dir", default=None, help="directory of the models (default: INFERENCE__MODEL_DIR)"
    )
    infer.add_argument("--watchlist", default=None, help="watchlist YAML (default: INFERENCE__WATCHLIST)")
    infer.add_argument("--http-port", type=int, default=None, help="port of /metrics and /healthz (0: any)")
    infer.set_defaults(handler=_infer)


def with_overrides(settings: Settings, args: argparse.Namespace) -> Settings:
    """The settings with the command line's overrides of the inference section applied."""
    from pydantic import ValidationError

    from pulse.settings import InferenceSettings

    given = {
        "providers": args.providers,
        "device_id": args.device_id,
        "require_gpu": args.require_gpu,
        "batch_size": args.batch_size,
        "model_dir": args.model_dir,
        "watchlist": args.watchlist,
        "http_port": args.http_port,
    }
    update = {k: v for k, v in given.items() if v is not None}
    if not update:
        return settings
    try:
        section = InferenceSettings(**{**settings.inference.model_dump(), **update})
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first.get("loc") else "option"
        flag = "--" + name.replace("_", "-")
        raise ValueError(f"{flag} {update.get(name, '')}: {first.get('msg', 'invalid')}") from None
    return settings.model_copy(update={"inference": section})


def _infer(args: argparse.Namespace, settings: Settings) -> int:
    from pulse import kafka
    from workers.inference.loader import ModelLoadError, load_model
    from workers.inference.watchlist import Watchlist, WatchlistError

    try:
        settings = with_overrides(settings, args)
    except ValueError as exc:
        print(f"pulse infer: error: {exc}", file=sys.stderr)
        return 2
    if not kafka.ready(settings, timeout=10.0):
        print(
            f"pulse infer: error: no Kafka broker answers at {settings.kafka.bootstrap_servers}: start one "
            "(pulse services up) or set KAFKA__BOOTSTRAP_SERVERS",
            file=sys.stderr,
        )
        return 2
    try:
        watchlist = Watchlist.load(settings.inference.watchlist)
        model = load_model(settings.inference)
    except (WatchlistError, ModelLoadError) as exc:
        print(f"pulse infer: error: {exc}", file=sys.stderr)
        return 2
    return serve(settings, model, watchlist)


def serve(settings: Settings, model: PostModel, watchlist: Watchlist) -> int:
    """Run one worker until SIGTERM/SIGINT (drain, exit 0) or a failure (exit 1), with /metrics."""
    from pulse import metrics
    from pulse.shutdown import on_stop_signals
    from workers.inference.worker import InferenceWorker

    worker = InferenceWorker(settings, model, watchlist)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("stopping: draining in-flight records", extra={"stage": "inference", "signal": signum})
        worker.stop()

    on_stop_signals(on_signal)
    server = metrics.serve(settings.inference.http_host, settings.inference.http_port, worker.healthy)
    log.info(
        "metrics",
        extra={"stage": "inference", "address": f"{server.server_address[0]!s}:{server.server_address[1]}"},
    )
    try:
        code = worker.run()
    finally:
        server.shutdown()
    if worker.pipeline_alive():
        # A step still running in native code would abort the interpreter's exit (rc 134): leave now.
        log.error("a pipeline step did not stop in time: exiting", extra={"stage": "inference"})
        logging.shutdown()
        os._exit(code or 1)
    return code
