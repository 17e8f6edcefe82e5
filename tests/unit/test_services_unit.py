"""Pure parts of local service management: address parsing and the state file."""

from __future__ import annotations

from pathlib import Path

import pytest

from pulse import redis_client, services
from pulse.addresses import host_port
from pulse.settings import load


@pytest.mark.parametrize(
    ("address", "default", "expected"),
    [
        ("127.0.0.1:19092", 9092, ("127.0.0.1", 19092)),
        ("kafka-1:9093,kafka-2:9093", 9092, ("kafka-1", 9093)),
        ("localhost", 9092, ("localhost", 9092)),
        ("redis://127.0.0.1:6380/0", 6379, ("127.0.0.1", 6380)),
        ("redis://cache/0", 6379, ("cache", 6379)),
    ],
)
def test_host_port(address: str, default: int, expected: tuple[str, int]) -> None:
    assert host_port(address, default) == expected


def test_state_round_trips_and_down_without_state_stops_nothing(tmp_path: Path) -> None:
    settings = load(local={"data_dir": tmp_path})
    assert services.read_state(settings) == {}
    state = {"redis": services.ServiceState("redis", "redis://127.0.0.1:1/0", managed=False)}
    services._write_state(settings, state)
    assert services.read_state(settings) == state
    assert services.down(settings) == []  # not managed by us: never stopped
    assert services.read_state(settings) == {}


def test_remote_unreachable_redis_is_not_replaced_by_an_embedded_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load(local={"data_dir": tmp_path}, redis={"url": "redis://cache.internal:6379/0"})
    monkeypatch.setattr(redis_client, "ready", lambda s, timeout=1.0: False)
    with pytest.raises(services.ServiceError, match="not reachable: start it, or unset REDIS__URL"):
        services._redis_up(settings, None)


def test_down_can_stop_a_subset_and_keeps_the_rest_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load(local={"data_dir": tmp_path})
    stopped: list[str] = []
    monkeypatch.setattr(services, "_kafka_down", lambda state: stopped.append("kafka"))
    monkeypatch.setattr(services, "_redis_down", lambda state: stopped.append("redis"))
    services._write_state(
        settings,
        {
            "kafka": services.ServiceState("kafka", "127.0.0.1:9092", managed=True, pid=1),
            "redis": services.ServiceState("redis", "redis://127.0.0.1:6379/0", managed=True, pid=2),
        },
    )
    assert [s.name for s in services.down(settings, only=["redis"])] == ["redis"]
    assert stopped == ["redis"]
    assert set(services.read_state(settings)) == {"kafka"}
    assert [s.name for s in services.down(settings)] == ["kafka"]
    assert services.read_state(settings) == {}
