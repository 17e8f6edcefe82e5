"""`pulse infer` wiring: command-line overrides and finding the model directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pulse.cli import build_parser
from pulse.settings import load
from workers.inference.cli import with_overrides
from workers.inference.loader import ModelLoadError, model_dirs

pytestmark = pytest.mark.timeout(30)


def test_command_line_overrides_the_inference_settings_only_where_given() -> None:
    args = build_parser().parse_args(
        [
            "infer",
            "--providers",
            "CUDAExecutionProvider,CPUExecutionProvider",
            "--device-id",
            "1",
            "--batch-size",
            "128",
        ]
    )
    base = load()
    settings = with_overrides(base, args)
    assert settings.inference.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert settings.inference.device_id == 1 and settings.inference.batch_size == 128
    assert settings.inference.micro_batch == base.inference.micro_batch
    assert with_overrides(base, build_parser().parse_args(["infer"])) == base


def _model(directory: Path, task: str) -> Path:
    directory.mkdir(parents=True)
    (directory / "metadata.json").write_text(json.dumps({"task": task}))
    return directory


def test_model_dirs_are_found_by_their_metadata_task(tmp_path: Path) -> None:
    sentiment = _model(tmp_path / "a-sentiment-model", "sentiment")
    ner = _model(tmp_path / "wnut", "ner")
    (tmp_path / "README.md").write_text("model cards")
    assert model_dirs(tmp_path) == {"sentiment": sentiment, "ner": ner}


def test_missing_or_ambiguous_models_are_named(tmp_path: Path) -> None:
    _model(tmp_path / "s1", "sentiment")
    with pytest.raises(ModelLoadError, match="no ner model under"):
        model_dirs(tmp_path)
    _model(tmp_path / "n1", "ner")
    _model(tmp_path / "s2", "sentiment")
    with pytest.raises(ModelLoadError, match="more than one sentiment model"):
        model_dirs(tmp_path)
    with pytest.raises(ModelLoadError, match="no sentiment model"):
        model_dirs(tmp_path / "missing")
