"""The ``pulse`` command: the top floor, and the only module in ``pulse/`` that may import the stages.

Stage packages contribute their sub-commands through a ``register(subparsers)`` function that imports
only argparse wiring; their handlers import the rest, so ``pulse --help`` never loads ONNX Runtime,
torch or a stage's clients (the shell's own commands use the Kafka client library, which loads).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from pulse import logs, services, topics
from pulse.addresses import port_open
from pulse.settings import REPO_ROOT, Settings, load, markdown_reference, reference
from pulse.supervisor import Stage, Supervisor, pulse_command

log = logging.getLogger("pulse")

# Modules with a ``register(subparsers)`` function; a stage that is not installed is simply absent.
STAGE_COMMANDS = (
    "workers.ingest.cli",
    "workers.inference.cli",
    "workers.training.cli",
    "streams.cli",
    "workers.api.cli",
    "workers.notify.cli",
)


def _services(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "up":
        return _up(settings, provision=not args.no_topics)
    if args.action == "down":
        stopped = services.down(settings)
        if not stopped:
            print(
                "nothing to stop: no service was started by 'pulse services up' in", settings.local.data_dir
            )
        for svc in stopped:
            print(f"stopped {svc.name} at {svc.address}")
        return 0
    ok = True
    for name, (ready, known) in services.status(settings).items():
        address = (
            known.address
            if known
            else (settings.kafka.bootstrap_servers if name == "kafka" else settings.redis.shown_url)
        )
        who = "started by pulse" if known and known.managed else "external" if ready else "-"
        print(f"{name:6} {'up' if ready else 'down':5} {address:32} {who}")
        ok = ok and ready
    return 0 if ok else 1


def _up(settings: Settings, provision: bool = True, stop_hint: bool = True) -> int:
    state = services.up(settings)
    for svc in state.values():
        how = f"started (pid {svc.pid}, log {svc.log})" if svc.managed else "already running, used as is"
        print(f"{svc.name:6} {svc.address:32} {how}")
    if provision:
        _print_topics(topics.provision(settings))
    managed = [s.name for s in state.values() if s.managed]
    if managed and stop_hint:
        print(f"stop with: pulse services down   (stops {', '.join(managed)} only)")
    return 0


def _print_topics(report: topics.ApplyReport) -> None:
    for label, names in (
        ("created", report.created),
        ("grew", report.grown),
        ("reconfigured", report.reconfigured),
        ("unchanged", report.unchanged),
    ):
        if names:
            print(f"topics {label}: {', '.join(names)}")


def _topics(args: argparse.Namespace, settings: Settings) -> int:
    _print_topics(topics.provision(settings, replication_factor=args.replication_factor))
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    api_url = f"http://{settings.api.host}:{settings.api.port}/"
    if importlib.util.find_spec("workers.api") is not None:
        if settings.api.port and port_open(settings.api.host, settings.api.port):
            raise services.ServiceError(
                f"port {settings.api.port} (the dashboard) is taken: stop what uses it, or set API__PORT"
            )
        print(f"dashboard: {api_url}   (the sample's spike on Globex shows there within two minutes)")
    before = services.read_state(settings)
    _up(settings, stop_hint=False)
    stages = _pipeline_stages(args, settings)
    if not stages:
        print("no pipeline stages are installed: the broker and Redis are up with their topics.")
        print("stop with: pulse services down")
        return 0
    print(
        f"kafka {settings.kafka.bootstrap_servers}   redis {settings.redis.shown_url}   "
        f"sample {args.sample} at {args.rate:g} posts/s   (Ctrl-C stops everything)"
    )
    code = Supervisor(settings, stages, settings.local.data_dir / "logs").run(args.duration)
    started_now = [
        name
        for name, svc in services.read_state(settings).items()
        if svc.managed and not (name in before and before[name].managed)
    ]
    if started_now and not args.keep_services:
        for svc in services.down(settings, only=started_now):
            print(f"stopped {svc.name} at {svc.address}")
    still = [svc.name for svc in services.read_state(settings).values() if svc.managed]
    if still:
        print(f"still running: {', '.join(still)}; stop with: pulse services down")
    return code


# The sample stream replays ten minutes of event time at 2.5 times its pace (25 posts/s of a 10/s
# recording: what two cores carry with every stage, the local broker and a browser), so its Globex
# spike (event minutes 2:30 to 5:30) comes a minute in: short alert windows and baselines make it an
# alert within two minutes of start. Production defaults are 5 min / 1 h.
DEMO_DETECTORS = {
    "ALERTS__WINDOW_S": "60",
    "ALERTS__BASELINE_S": "240",
    "ALERTS__COOLDOWN_S": "600",
    "TRENDS__WINDOWS": "60,300",
}


def _pipeline_stages(args: argparse.Namespace, settings: Settings) -> list[Stage]:
    """Every stage that is part of this build, wired to the sample stream, in pipeline order.

    Each consumer gets a stable group instance id (static membership): the local broker never expires
    a killed member, and a stage restarted under the same id gets its partitions back at once.
    """
    stages = []
    found = importlib.util.find_spec
    if found("streams") is not None:
        env = {**DEMO_DETECTORS, "STREAMS__INSTANCE_ID": "pulse-run-streams"}
        stages.append(
            Stage("streams", pulse_command("streams", "--http-port", "0"), env={**env, **_own(env)})
        )
    if found("workers.inference") is not None:
        env = {"INFERENCE__INSTANCE_ID": "pulse-run-inference"}
        argv = pulse_command("infer", "--watchlist", str(args.watchlist), "--http-port", "0")
        stages.append(Stage("inference", argv, env=_own(env)))
    if found("workers.ingest") is not None:
        argv = pulse_command(
            "ingest", "file", str(args.sample), "--loop", "--retime", "--rate", f"{args.rate:g}",
            "--no-progress", "--metrics-port", "0",
        )  # fmt: skip
        stages.append(Stage("ingest", argv))
    if found("workers.api") is not None:
        stages.append(Stage("api", pulse_command("api")))
    if found("workers.notify") is not None:
        stages.append(Stage("notify", pulse_command("notify", "--http-port", "0")))
    return stages


def _own(defaults: dict[str, str]) -> dict[str, str]:
    """``defaults`` where the user's environment does not already say otherwise."""
    return {k: os.environ.get(k, v) for k, v in defaults.items()}


def _config(args: argparse.Namespace, settings: Settings) -> int:
    if args.markdown:
        print(markdown_reference(), end="")
        return 0
    current = settings.model_dump(mode="json")  # secrets (SecretStr) come out as '**********'
    current["redis"]["url"] = settings.redis.shown_url
    for variable, _default, _meaning in reference():
        value: object = current
        for part in variable.lower().split("__"):
            value = value.get(part) if isinstance(value, dict) else None
        print(f"{variable}={env_value(value)}")
    return 0


def env_value(value: object) -> str:
    """A setting's value as an environment variable would give it (lists comma-joined, maps as JSON)."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def settings_problem(exc: ValidationError) -> str:
    """The first invalid setting as its variable name, its value and what was expected."""
    first = exc.errors()[0]
    variable = "__".join(str(p).upper() for p in first.get("loc", ()))
    given = first.get("input")
    shown = given if isinstance(given, str | int | float) else None
    what = f"{variable}={shown}" if shown is not None else variable
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")  # a validator's own words
    return f"setting {what}: {message}{more}" if what else f"settings: {message}{more}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pulse",
        description="Social Pulse: real-time social-media listening on Kafka, ONNX Runtime and Redis.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    svc = sub.add_parser("services", help="start, stop or check the local broker and Redis")
    svc.add_argument("action", choices=("up", "down", "status"))
    svc.add_argument("--no-topics", action="store_true", help="do not provision topics after 'up'")
    svc.set_defaults(handler=_services)

    top = sub.add_parser("topics", help="create or update the topics in infra/topics.yaml (idempotent)")
    top.add_argument("action", choices=("apply",))
    top.add_argument("--replication-factor", type=int, default=None, help="override the file's default")
    top.set_defaults(handler=_topics)

    cfg = sub.add_parser("config", help="print every setting with its current value (secrets masked)")
    cfg.add_argument("--markdown", action="store_true", help="print the reference table for the README")
    cfg.set_defaults(handler=_config)

    run = sub.add_parser("run", help="start the local services and every pipeline stage on a sample stream")
    run.add_argument(
        "--sample",
        type=Path,
        default=REPO_ROOT / "infra" / "sample" / "posts.jsonl",
        help="JSON Lines file replayed in a loop (default: the shipped sample)",
    )
    run.add_argument(
        "--watchlist",
        type=Path,
        default=REPO_ROOT / "infra" / "sample" / "watchlist.yaml",
        help="brands and keywords for inference (default: the sample stream's brands)",
    )
    run.add_argument("--rate", type=float, default=25.0, help="posts per second from the sample (default 25)")
    run.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    run.add_argument(
        "--keep-services",
        action="store_true",
        help="leave the broker and Redis running after the stages stop",
    )
    run.set_defaults(handler=_run)

    for module in STAGE_COMMANDS:
        try:
            importlib.import_module(module).register(sub)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module.startswith(exc.name):
                continue  # the stage is not part of this build
            raise
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load()
    except ValidationError as exc:
        print(f"pulse: error: {settings_problem(exc)}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    for line in settings.deprecations():
        log.warning(line)
    try:
        return int(args.handler(args, settings))
    except (services.ServiceError, topics.TopicError) as exc:
        print(f"pulse: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `pulse config | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
