"""`pulse notify`: argparse wiring; the Kafka clients and httpx load inside the handler."""

from __future__ import annotations

import argparse
import logging
import sys
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pulse.settings import Settings

log = logging.getLogger("pulse.notify")


def register(subparsers: argparse._SubParsersAction) -> None:
    notify = subparsers.add_parser(
        "notify",
        help="deliver alerts to webhooks (signed JSON, Slack)",
        description="Consumes the alerts topic in group NOTIFY__GROUP_ID and POSTs every alert to each "
        "URL in NOTIFY__WEBHOOKS; with none, alerts are only logged. SIGTERM stops after the alert in "
        "hand and exits 0.",
    )
    notify.add_argument("--http-port", type=int, default=None, help="port of /metrics and /healthz (0: any)")
    notify.set_defaults(handler=_notify)


def _notify(args: argparse.Namespace, settings: Settings) -> int:
    from pulse import metrics
    from pulse.shutdown import on_stop_signals
    from workers.notify.worker import Notifier

    if args.http_port is not None:
        settings = settings.model_copy(
            update={"notify": settings.notify.model_copy(update={"http_port": args.http_port})}
        )
    try:
        notifier = Notifier(settings)
    except ValueError as exc:
        print(f"pulse notify: error: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("stopping after the alert in hand", extra={"stage": "notify", "signal": signum})
        notifier.stop()

    on_stop_signals(on_signal)
    server = metrics.serve(settings.notify.http_host, settings.notify.http_port, notifier.healthy)
    try:
        return notifier.run()
    finally:
        server.shutdown()
