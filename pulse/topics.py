"""Topic provisioning from ``infra/topics.yaml``: create what is missing, align configs, grow partitions."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from pulse.settings import Settings

log = logging.getLogger(__name__)


class TopicError(RuntimeError):
    """The topic file or the cluster disagrees with what we need; the message says what to do."""


@dataclass(frozen=True)
class TopicSpec:
    role: str
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


def load_specs(path: Path, names: dict[str, str], replication_factor: int | None = None) -> list[TopicSpec]:
    """Read the topic file; ``names`` maps role to topic name (from settings)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise TopicError(f"topic definitions not found at {path}: set TOPICS__DEFINITIONS") from None
    defaults = doc.get("defaults", {})
    topics = doc.get("topics", {})
    unknown = set(topics) - set(names)
    if unknown:
        raise TopicError(f"{path}: unknown topic roles {sorted(unknown)}; known roles: {sorted(names)}")
    missing = set(names) - set(topics)
    if missing:
        raise TopicError(f"{path}: no definition for roles {sorted(missing)}")
    specs = []
    for role, body in topics.items():
        partitions = int(body.get("partitions", 0))
        if partitions < 1:
            raise TopicError(f"{path}: topics.{role}.partitions must be a positive integer")
        specs.append(
            TopicSpec(
                role=role,
                name=names[role],
                partitions=partitions,
                replication_factor=replication_factor or int(defaults.get("replication_factor", 1)),
                config={str(k): str(v) for k, v in (body.get("config") or {}).items()},
            )
        )
    return specs


@dataclass
class ApplyReport:
    created: list[str] = field(default_factory=list)
    grown: list[str] = field(default_factory=list)
    reconfigured: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def apply(admin: AdminClient, specs: list[TopicSpec], timeout: float = 30.0) -> ApplyReport:
    """Bring the cluster in line with ``specs``; safe to run any number of times."""
    report = ApplyReport()
    existing = admin.list_topics(timeout=timeout).topics
    to_create = [s for s in specs if s.name not in existing]
    if to_create:
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, s.replication_factor, config=s.config) for s in to_create],
            request_timeout=timeout,
        )
        for name, fut in futures.items():
            _result(fut, f"create topic {name}", already_ok=True)
            report.created.append(name)
    for spec in specs:
        if spec.name not in existing:
            continue
        changed = False
        have = len(existing[spec.name].partitions)
        if have < spec.partitions:
            grown = admin.create_partitions(
                [NewPartitions(spec.name, spec.partitions)], request_timeout=timeout
            )
            _result(grown[spec.name], f"grow {spec.name} to {spec.partitions} partitions")
            report.grown.append(spec.name)
            changed = True
        elif have > spec.partitions:
            log.warning(
                "topic has more partitions than defined; Kafka cannot shrink them",
                extra={"topic": spec.name, "have": have, "defined": spec.partitions},
            )
        if spec.config and _config_differs(admin, spec, timeout):
            # Incremental: only our keys change; settings an operator added by hand stay.
            entries = [
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in spec.config.items()
            ]
            resource = ConfigResource("topic", spec.name, incremental_configs=entries)
            _result(
                admin.incremental_alter_configs([resource], request_timeout=timeout)[resource],
                f"set config of {spec.name}",
            )
            report.reconfigured.append(spec.name)
            changed = True
        if not changed:
            report.unchanged.append(spec.name)
    return report


def _config_differs(admin: AdminClient, spec: TopicSpec, timeout: float) -> bool:
    resource = ConfigResource("topic", spec.name)
    current = _result(
        admin.describe_configs([resource], request_timeout=timeout)[resource], f"describe {spec.name}"
    )
    return any(current.get(k) is None or current[k].value != v for k, v in spec.config.items())


def _result(fut: Any, what: str, already_ok: bool = False) -> Any:
    try:
        return fut.result()
    except KafkaException as exc:
        err = exc.args[0]
        if already_ok and err.name() == "TOPIC_ALREADY_EXISTS":
            return None
        raise TopicError(f"could not {what}: {err.str()}") from None


def provision(
    settings: Settings, replication_factor: int | None = None, timeout: float = 30.0
) -> ApplyReport:
    """Load the topic file named in settings and apply it to the configured cluster."""
    specs = load_specs(settings.topics.definitions, settings.topics.by_role(), replication_factor)
    admin = AdminClient(settings.kafka.config())
    return apply(admin, specs, timeout)
