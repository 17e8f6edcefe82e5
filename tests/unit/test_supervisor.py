"""`pulse run` progress lines: totals per topic role and the rate since the last line."""

from __future__ import annotations

from pulse.supervisor import format_progress, pulse_command


def test_progress_line_shows_totals_and_rates() -> None:
    names = {"raw": "posts.raw", "enriched": "posts.enriched", "dlq": "posts.dlq"}
    line = format_progress(
        {"posts.raw": 600, "posts.enriched": 550, "posts.dlq": 2},
        {"posts.raw": 100, "posts.enriched": 50, "posts.dlq": 2},
        5.0,
        names,
    )
    assert line == "raw=600 (+100/s)  enriched=550 (+100/s)  dlq=2 (+0/s)"


def test_stage_commands_run_with_this_interpreter() -> None:
    argv = pulse_command("infer", "--batch-size", "8")
    assert argv[1:] == ["-m", "pulse.cli", "infer", "--batch-size", "8"]
