"""The broker a benchmark runs against: the one at KAFKA__BOOTSTRAP_SERVERS when it answers, else a
private noida-db on the first free port of ``ports`` (stopped by the caller when ``started``)."""

from __future__ import annotations

from pathlib import Path

from pulse import kafka, services
from pulse.addresses import port_open
from pulse.settings import Settings, load


def bench_broker(workdir: Path, ports: range) -> tuple[Settings, bool]:
    """(settings pointing at the broker, whether this call started it)."""
    base = load()
    if kafka.ready(base, timeout=1.0):
        return base, False
    port = next(p for p in ports if not port_open("127.0.0.1", p))
    settings = load(
        kafka={"bootstrap_servers": f"127.0.0.1:{port}"},
        local={"data_dir": workdir / "broker", "start_timeout_s": 60},
    )
    services.up(settings)
    return settings, True
