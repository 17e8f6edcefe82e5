"""docker-compose.yml and the Dockerfile agree with the code: real settings, real commands."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from pulse.cli import build_parser
from pulse.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PULSE_SERVICES = {
    name: body for name, body in COMPOSE["services"].items() if "pulse" in str(body.get("command", ""))
}


def _is_setting(variable: str) -> bool:
    model: type[BaseModel] = Settings
    parts = variable.lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if i < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


def _environment(body: dict[str, Any]) -> dict[str, str]:
    env = body.get("environment", {})
    return dict(item.split("=", 1) for item in env) if isinstance(env, list) else dict(env)


def test_the_stack_has_kafka_redis_topic_init_and_the_stages() -> None:
    services = COMPOSE["services"]
    assert {"kafka", "redis", "topics", "ingest", "inference"} <= set(services)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    for name in ("kafka", "redis", "ingest", "inference"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"


def test_inference_reserves_a_gpu() -> None:
    devices = COMPOSE["services"]["inference"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)


@pytest.mark.parametrize("name", sorted(PULSE_SERVICES))
def test_every_environment_variable_is_a_real_setting(name: str) -> None:
    for variable in _environment(PULSE_SERVICES[name]):
        assert _is_setting(variable), f"{name}: {variable} is not a Social Pulse setting"


@pytest.mark.parametrize("name", sorted(PULSE_SERVICES))
def test_every_command_exists(name: str) -> None:
    command = PULSE_SERVICES[name]["command"]
    assert command[0] == "pulse"
    build_parser().parse_args(command[1:])  # exits (fails the test) on an unknown command or option


def test_dockerfile_env_variables_are_real_settings() -> None:
    text = (ROOT / "infra" / "Dockerfile").read_text()
    block = re.search(r"^ENV TOPICS__.*?(?=^\S)", text, re.S | re.M)
    assert block is not None
    variables = re.findall(r"([A-Z][A-Z0-9_]+)=", block.group(0))
    assert variables
    for variable in variables:
        assert _is_setting(variable), f"Dockerfile: {variable} is not a setting"


def test_setting_check_rejects_typos() -> None:
    assert _is_setting("INFERENCE__BATCH_SIZE")
    assert not _is_setting("INFERENCE__BATCHSIZE")
    assert not _is_setting("KAFKA__BOOTSTRAP_SERVERS__X")
