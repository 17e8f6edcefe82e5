"""The foundation against the real local broker and real Redis: topics, codec over Kafka, Redis."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from pulse import kafka, redis_client, topics
from pulse.addresses import port_open
from pulse.settings import Settings
from schemas import RawPost, decode, encode
from tests.factories import post_factory
from tests.harness import free_port


def test_topics_are_provisioned_with_their_configs(settings: Settings) -> None:
    admin = AdminClient(settings.kafka.config())
    metadata = admin.list_topics(timeout=10).topics
    assert len(metadata[settings.topics.raw].partitions) == 6
    assert len(metadata[settings.topics.alerts].partitions) == 1
    resource = ConfigResource("topic", settings.topics.alerts)
    config = admin.describe_configs([resource])[resource].result()
    assert config["cleanup.policy"].value == "compact,delete"
    assert config["retention.ms"].value == "2592000000"


def test_provisioning_is_idempotent(settings: Settings) -> None:
    again = topics.provision(settings)
    assert again.created == [] and again.grown == [] and again.reconfigured == []
    assert sorted(again.unchanged) == sorted(settings.topics.by_role().values())


def test_raw_posts_round_trip_through_the_broker(settings: Settings) -> None:
    sent = [post_factory(text=f"post {i} about #acme ✨ ünïcode") for i in range(50)]
    producer = Producer(settings.kafka.config(**{"enable.idempotence": True, "compression.type": "lz4"}))
    for post in sent:
        producer.produce(settings.topics.raw, key=post.id.encode(), value=encode(post))
    assert producer.flush(30) == 0

    consumer = Consumer(
        settings.kafka.config(**{"group.id": f"t-{settings.topics.raw}", "auto.offset.reset": "earliest"})
    )
    consumer.subscribe([settings.topics.raw])
    received: dict[str, RawPost] = {}
    deadline = time.monotonic() + 30
    try:
        while len(received) < len(sent) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            post = decode(msg.value(), RawPost)
            assert msg.key() == post.id.encode()
            received[post.id] = post
    finally:
        consumer.close()
    assert received == {p.id: p for p in sent}


def test_redis_round_trip_with_a_lua_script(settings: Settings) -> None:
    client = redis_client.client(settings)
    key = f"{{{settings.redis.key_prefix}}}:probe"
    script = client.register_script(
        "redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2]) return redis.call('HGETALL', KEYS[1])"
    )
    script(keys=[key], args=["acme", 3])
    assert script(keys=[key], args=["acme", 4]) == [b"acme", b"7"]
    client.delete(key)
    client.close()


def test_cli_up_status_down_starts_and_stops_only_its_own(
    tmp_path: Path, services_settings: Settings
) -> None:
    kafka_port, redis_port = free_port(), free_port()
    env = {
        **os.environ,
        "LOCAL__DATA_DIR": str(tmp_path),
        "KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka_port}",
        "REDIS__URL": f"redis://127.0.0.1:{redis_port}/0",  # nothing there: the embedded one starts
    }
    pulse = [sys.executable, "-m", "pulse.cli"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*pulse, *args], env=env, capture_output=True, text=True, timeout=120)

    up = run("services", "up")
    assert up.returncode == 0, up.stderr
    assert f"127.0.0.1:{kafka_port}" in up.stdout and "started" in up.stdout
    assert "topics created: posts.raw" in up.stdout
    assert redis.Redis(port=redis_port).ping()

    status = run("services", "status")
    assert status.returncode == 0
    assert status.stdout.count("started by pulse") == 2

    down = run("services", "down")
    assert down.returncode == 0
    assert "stopped kafka" in down.stdout and "stopped redis" in down.stdout
    assert run("services", "status").returncode == 1
    assert not port_open("127.0.0.1", redis_port)
    # The session's own services were left alone.
    assert kafka.ready(services_settings) and redis_client.ready(services_settings)


def test_a_failed_kafka_probe_writes_nothing_to_stderr() -> None:
    # librdkafka's own thread writes to stderr unless the client has a logger. The probe's time-outs
    # used to reach the CLI that way whenever its socket timer beat list_topics (a load-dependent
    # race); librdkafka's debug output makes those lines certain, so the test does not race.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        env = {
            **os.environ,
            "KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{squatter.getsockname()[1]}",
            "KAFKA__CLIENT": '{"debug": "broker,protocol"}',
        }
        code = "from pulse import kafka, settings; print(kafka.ready(settings.Settings(), 1.0))"
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
    assert (done.returncode, done.stdout, done.stderr) == (0, "False\n", "")


def test_a_taken_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = {
            **os.environ,
            "LOCAL__DATA_DIR": str(tmp_path),
            "KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        }
        done = subprocess.run(
            [sys.executable, "-m", "pulse.cli", "services", "up"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"pulse: error: port {port} is taken by something that is not a Kafka "
        f"broker: stop it, or set KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:<free port>"
    )
