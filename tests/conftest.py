"""Test session plumbing: the real local broker and real Redis, started the way `make test` does.

Integration and e2e tests take ``settings`` (or ``fresh_settings``) and get services that answer;
they are started once per session, only when such a test runs, and stopped at the end. Set
PULSE_TEST_KAFKA / PULSE_TEST_REDIS_URL to run against services you started yourself.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pulse import redis_client, services, topics
from pulse.settings import Settings, load
from tests.harness import free_port


def _test_redis_url() -> str:
    """DB 15 of the machine's Redis when there is one (14, 13, ... for the other pytest-xdist workers:
    a test that loses Redis's data flushes its own DB); an embedded server per worker otherwise."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker.removeprefix("gw")) if worker.removeprefix("gw").isdigit() else 0
    machine = load(redis={"url": "redis://127.0.0.1:6379/0"})
    if redis_client.ready(machine):
        return f"redis://127.0.0.1:6379/{15 - index}"
    return f"redis://127.0.0.1:{free_port()}/15"


@pytest.fixture(scope="session")
def services_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings pointing at a running broker and Redis for this test session."""
    data_dir: Path = tmp_path_factory.mktemp("pulse-services")
    kafka = os.environ.get("PULSE_TEST_KAFKA") or f"127.0.0.1:{free_port()}"
    redis_url = os.environ.get("PULSE_TEST_REDIS_URL") or _test_redis_url()
    settings = load(
        kafka={"bootstrap_servers": kafka},
        redis={"url": redis_url},
        local={"data_dir": data_dir, "start_timeout_s": 60},
    )
    services.up(settings)
    try:
        yield settings
    finally:
        services.down(settings)


@pytest.fixture
def fresh_settings(services_settings: Settings) -> Iterator[Callable[..., Settings]]:
    """A factory: settings with topic names and a Redis key prefix unique to this call, topics created;
    the Redis keys under that prefix are deleted after the test."""
    made: list[Settings] = []

    def make(**overrides: object) -> Settings:
        suffix = uuid.uuid4().hex[:8]
        base = services_settings.model_dump()
        base["topics"] = {
            **base["topics"],
            **{role: f"{name}.{suffix}" for role, name in services_settings.topics.by_role().items()},
        }
        base["redis"] = {**base["redis"], "key_prefix": f"test-{suffix}"}
        for section, values in overrides.items():
            base[section] = {**base.get(section, {}), **values} if isinstance(values, dict) else values
        settings = Settings(**base)
        topics.provision(settings)
        made.append(settings)
        return settings

    yield make
    # This test's Redis keys go with it (the machine's Redis is shared by every test run).
    for settings in made:
        client = redis_client.client(settings)
        try:
            for key in client.scan_iter(match=f"{settings.redis.key_prefix}:*", count=1000):
                client.delete(key)
        finally:
            client.close()


@pytest.fixture
def settings(fresh_settings: Callable[..., Settings]) -> Settings:
    """Settings with this test's own topics on the session's broker and its own Redis key prefix."""
    return fresh_settings()
