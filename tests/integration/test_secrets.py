"""Secrets never logged: every stage run at DEBUG with every secret setting set, and `pulse config`.

Each secret has a value no log line could contain by chance. The stages run against the real broker;
Redis gets a password the server does not expect (in the URL, where the docs say not to put one), so
the stages that use Redis also walk their error paths, which is where secrets tend to leak.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pulse.settings import Settings
from tests.harness import free_port, stage_env

pytestmark = pytest.mark.timeout(180)
PULSE = [sys.executable, "-m", "pulse.cli"]
SECRETS = {
    "KAFKA__SASL_PASSWORD": "kafka-pw-7f3a9c",
    "INGEST__HTTP_TOKEN": "ingest-token-41d2e8",
    "API__TOKEN": "api-token-9b77c0",
    "NOTIFY__SECRET": "notify-secret-2c5e1a",
    "PRIVACY__HMAC_KEY": "hmac-key-8e0f64",
}
REDIS_PASSWORD = "redis-pw-5a1b3d"


def test_no_stage_and_no_config_output_shows_a_secret(settings: Settings, tmp_path: Path) -> None:
    host_port = settings.redis.url.removeprefix("redis://")
    http_port, api_port = free_port(), free_port()
    env = stage_env(
        settings,
        **SECRETS,
        REDIS__URL=f"redis://:{REDIS_PASSWORD}@{host_port}",
        PRIVACY__PSEUDONYMIZE_AUTHORS="true",
        LOG_LEVEL="DEBUG",
        API__PORT=str(api_port),
        NOTIFY__WEBHOOKS="http://127.0.0.1:9/hook",
        INFERENCE__GROUP_ID=f"secrets-infer-{settings.redis.key_prefix}",
        STREAMS__GROUP_ID=f"secrets-{settings.redis.key_prefix}",
        NOTIFY__GROUP_ID=f"secrets-notify-{settings.redis.key_prefix}",
    )
    config = subprocess.run([*PULSE, "config"], env=env, capture_output=True, text=True, timeout=60)
    assert config.returncode == 0, config.stderr
    assert "INGEST__HTTP_TOKEN=**********" in config.stdout
    commands = {
        "http": ["ingest", "http", "--port", str(http_port)],
        "generator": ["ingest", "generator", "--count", "50", "--metrics-port", "0"],
        "infer": ["infer", "--http-port", "0"],
        "streams": ["streams", "--http-port", "0"],
        "api": ["api"],
        "notify": ["notify", "--http-port", "0"],
    }
    logs = {name: tmp_path / f"{name}.log" for name in commands}
    procs = {}
    for name, argv in commands.items():
        with logs[name].open("wb") as out:
            procs[name] = subprocess.Popen([*PULSE, *argv], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:  # a request with the token, once the HTTP source answers
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{http_port}/v1/posts",
                    data=b'{"id": "s:1", "platform": "web", "author": {"id": "u"}, "text": "hi",'
                    b' "created_at": "2026-12-01T10:00:00Z"}',
                    headers={"Authorization": f"Bearer {SECRETS['INGEST__HTTP_TOKEN']}"},
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    assert response.status == 202
                break
            except OSError:
                assert time.monotonic() < deadline, logs["http"].read_text()[-2000:]
                time.sleep(0.3)
        time.sleep(3)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    outputs = {"pulse config": config.stdout + config.stderr}
    outputs.update({name: path.read_text(errors="replace") for name, path in logs.items()})
    assert "DEBUG" in outputs["http"] or "debug" in outputs["http"]  # the stages did log at DEBUG
    for name, text in outputs.items():
        for secret in [*SECRETS.values(), REDIS_PASSWORD]:
            assert secret not in text, f"{name} printed a secret:\n{text[-2000:]}"
