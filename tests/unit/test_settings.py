"""Settings: nested sections from the environment, pass-through client options, secrets stay secret."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pulse.settings import Settings, load


def test_defaults_point_at_the_local_services() -> None:
    settings = Settings(_env_file=None)
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.redis.url.startswith("redis://127.0.0.1:6379")
    assert settings.topics.by_role() == {
        "raw": "posts.raw",
        "enriched": "posts.enriched",
        "trends": "trends",
        "alerts": "alerts",
        "dlq": "posts.dlq",
    }


def test_nested_sections_read_double_underscore_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA__BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("INFERENCE__BATCH_SIZE", "256")
    monkeypatch.setenv("INFERENCE__PROVIDERS", "CUDAExecutionProvider, CPUExecutionProvider")
    monkeypatch.setenv("TOPICS__RAW", "acme.posts.raw")
    settings = Settings(_env_file=None)
    assert settings.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.inference.batch_size == 256
    assert settings.inference.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert settings.topics.raw == "acme.posts.raw"


def test_librdkafka_options_pass_through_and_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA__CLIENT", '{"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}')
    monkeypatch.setenv("KAFKA__SASL_PASSWORD", "hunter2")
    settings = Settings(_env_file=None)
    conf = settings.kafka.config(**{"client.id": "x", "sasl.mechanism": "SCRAM-SHA-512"})
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.password"] == "hunter2"
    assert "hunter2" not in repr(settings) and "hunter2" not in settings.model_dump_json()


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / ".env"
    env.write_text("REDIS__URL=redis://cache:6380/2\nLOG_LEVEL=DEBUG\n")
    settings = Settings(_env_file=env)
    assert settings.redis.url == "redis://cache:6380/2"
    assert settings.log_level == "DEBUG"


def test_bad_values_fail_with_the_setting_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCE__BATCH_SIZE", "0")
    with pytest.raises(ValidationError, match=r"inference\.batch_size"):
        Settings(_env_file=None)


def test_settings_are_frozen() -> None:
    settings = load()
    with pytest.raises(ValidationError):
        settings.kafka.bootstrap_servers = "elsewhere:9092"  # type: ignore[misc]


def test_producer_tuning_lives_in_the_kafka_section_and_every_stage_reads_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pulse.kafka import producer

    monkeypatch.setenv("KAFKA__PRODUCER__COMPRESSION", "zstd")
    monkeypatch.setenv("KAFKA__PRODUCER__LINGER_MS", "7")
    settings = Settings(_env_file=None)
    assert settings.kafka.producer.compression == "zstd" and settings.kafka.producer.linger_ms == 7
    assert settings.deprecations() == []
    seen: dict[str, object] = {}
    monkeypatch.setattr("pulse.kafka.Producer", lambda conf: seen.update(conf))
    producer(settings, "inference")
    assert (seen["compression.type"], seen["linger.ms"], seen["message.timeout.ms"]) == ("zstd", 7, 120_000)


def test_the_old_ingest_producer_variables_still_work_for_one_release_and_say_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INGEST__COMPRESSION", "zstd")
    monkeypatch.setenv("INGEST__DELIVERY_TIMEOUT_MS", "5000")
    monkeypatch.setenv("INGEST__LINGER_MS", "3")
    monkeypatch.setenv("KAFKA__PRODUCER__LINGER_MS", "9")  # the new name wins over the old one
    settings = Settings(_env_file=None)
    producer = settings.kafka.producer
    assert (producer.compression, producer.delivery_timeout_ms, producer.linger_ms) == ("zstd", 5000, 9)
    lines = settings.deprecations()
    assert len(lines) == 3
    assert "INGEST__COMPRESSION is deprecated" in lines[0] and "KAFKA__PRODUCER__COMPRESSION" in lines[0]


def test_two_stages_in_one_consumer_group_is_a_clear_error() -> None:
    import pytest

    from pulse.settings import load

    with pytest.raises(ValueError, match="INFERENCE__GROUP_ID and STREAMS__GROUP_ID are both 'g'"):
        load(inference={"group_id": "g"}, streams={"group_id": "g"})
