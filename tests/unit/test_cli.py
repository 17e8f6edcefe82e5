"""The `pulse` command: every command listed with one line of help, errors are one clear line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pulse.cli import build_parser, main


def test_help_lists_commands_with_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("services", "topics", "run"):
        assert f"    {command} " in out


def test_help_does_not_import_heavy_runtimes() -> None:
    code = (
        "import sys\n"
        "from pulse.cli import build_parser\n"
        "build_parser()\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'onnxruntime', 'faust') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_service_errors_are_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    from pulse import services

    def refuse(settings):
        raise services.ServiceError("port 9092 is taken by something that is not a Kafka broker: stop it")

    monkeypatch.setattr(services, "up", refuse)
    monkeypatch.setenv("LOCAL__DATA_DIR", str(tmp_path))
    assert main(["services", "up"]) == 2
    err = capsys.readouterr().err
    assert err == "pulse: error: port 9092 is taken by something that is not a Kafka broker: stop it\n"


def test_the_http_source_offers_no_metrics_port_it_would_ignore() -> None:
    # /metrics and /healthz are on the HTTP source's own port; an option that did nothing was a lie.
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ingest", "http", "--metrics-port", "9200"])
    assert build_parser().parse_args(["ingest", "file", "x.jsonl", "--metrics-port", "0"]).metrics_port == 0


def test_a_bad_setting_is_one_line_naming_the_variable_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INFERENCE__BATCH_SIZE", "abc")
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pulse: error: setting INFERENCE__BATCH_SIZE=abc: ") and "valid integer" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_a_bad_command_line_override_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["infer", "--batch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "pulse infer: error: --batch-size 0: Input should be greater than or equal to 1\n"


def test_config_prints_values_that_can_be_fed_back_as_environment_variables(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TRENDS__WINDOWS", "60,300")
    assert main(["config"]) == 0
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["TRENDS__WINDOWS"] == "60,300" and lines["INFERENCE__PROVIDERS"] == "CPUExecutionProvider"
    assert lines["KAFKA__CLIENT"] == "{}" and lines["STREAMS__DETECTORS"] == "true"
    from pulse.settings import Settings

    for variable, value in lines.items():  # every printed value reads back as itself
        if value and "*" not in value:
            monkeypatch.setenv(variable, value)
    Settings()


def test_pulse_run_gives_every_consumer_a_stable_instance_id(monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 15, defect 10: after kill -9, a default worker got no partitions for minutes (the local
    # broker never expires a killed member); under a stable id a restart takes them back at once.
    from pathlib import Path

    from pulse.cli import _pipeline_stages
    from pulse.settings import Settings

    args = build_parser().parse_args(["run"])
    monkeypatch.delenv("INFERENCE__INSTANCE_ID", raising=False)
    monkeypatch.setenv("STREAMS__INSTANCE_ID", "mine")
    stages = {s.name: s for s in _pipeline_stages(args, Settings())}
    assert stages["inference"].env["INFERENCE__INSTANCE_ID"] == "pulse-run-inference"
    assert stages["streams"].env["STREAMS__INSTANCE_ID"] == "mine"  # the user's own setting wins
    assert Path(args.sample).exists()
