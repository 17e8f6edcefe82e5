"""The pipeline as a user runs it: `pulse ingest` and `pulse infer` processes, real broker, real models."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from pulse.settings import Settings
from schemas import DeadLetter, EnrichedPost, decode, encode
from tests.factories import post_factory
from tests.harness import stage_env
from tests.kafka_io import read_topic

PULSE = [sys.executable, "-m", "pulse.cli"]
SAMPLE_WATCHLIST = Path(__file__).resolve().parents[2] / "infra" / "sample" / "watchlist.yaml"


# One `pulse run` at a time (its stages use their default ports): one pytest-xdist worker runs them all.
pytestmark = pytest.mark.xdist_group("pulse-run")


def _drain(
    settings: Settings, topic: str, want: int, parse: Callable[[bytes], Any], timeout: float = 120
) -> list:
    return [parse(value) for _key, value in read_topic(settings, topic, want, timeout=timeout, settle=2.0)]


def test_posts_flow_from_a_file_to_enriched_and_bad_lines_to_the_dlq(
    settings: Settings, tmp_path: Path
) -> None:
    texts = [
        "I absolutely hate the new Acme update, it broke everything and support ignores me #fail",
        "Thank you @GlobexHelp for the quick refund, great service!",
        "Meeting Tim Cook at Apple Park in Cupertino tomorrow",
    ]
    posts = [post_factory(id=f"e2e:{i}", text=texts[i % len(texts)] + f" ({i})") for i in range(30)]
    lines = [encode(p) for p in posts]
    lines.insert(7, b'{"id": "e2e:broken", "text": ')  # truncated JSON
    lines.insert(15, orjson.dumps({"id": "e2e:no-text", "platform": "test"}))  # missing fields
    source = tmp_path / "posts.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    env = stage_env(
        settings,
        INFERENCE__HTTP_PORT="0",
        INGEST__METRICS_PORT="0",
        INFERENCE__WATCHLIST=str(SAMPLE_WATCHLIST),
    )

    infer = subprocess.Popen([*PULSE, "infer"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ingest = subprocess.run(
            [*PULSE, "ingest", "file", str(source), "--no-progress", "--no-warm"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ingest.returncode == 0, ingest.stderr

        enriched = _drain(settings, settings.topics.enriched, len(posts), lambda v: decode(v, EnrichedPost))
        by_id = {e.post.id: e for e in enriched}
        assert set(by_id) == {p.id for p in posts}
        assert len(enriched) == len(posts), "a post came out twice in a normal run"
        angry, thanks, people = by_id["e2e:0"], by_id["e2e:1"], by_id["e2e:2"]
        assert angry.sentiment.label == "negative"
        assert thanks.sentiment.label == "positive"
        assert [(m.term, m.kind) for m in angry.matches] == [("Acme", "brand")]
        assert {(m.term, m.kind) for m in thanks.matches} == {("Globex", "brand"), ("refund", "keyword")}
        assert {m.task for m in angry.models} == {"sentiment", "ner"}
        for entity in people.entities:
            assert people.post.text[entity.start : entity.end] == entity.text

        letters = _drain(settings, settings.topics.dlq, 2, lambda v: decode(v, DeadLetter), timeout=30)
        assert len(letters) == 2
        assert {letter.stage for letter in letters} == {"ingest"}
        assert b'"e2e:broken"' in letters[0].original or b'"e2e:broken"' in letters[1].original
        assert all(letter.error for letter in letters)
    finally:
        infer.send_signal(signal.SIGTERM)
        out, _ = infer.communicate(timeout=60)
    assert infer.returncode == 0, out.decode(errors="replace")[-2000:]


def test_pulse_run_starts_every_stage_and_stops_them(settings: Settings, tmp_path: Path) -> None:
    env = stage_env(settings, INFERENCE__HTTP_PORT="0", LOCAL__DATA_DIR=str(tmp_path))
    done = subprocess.run(
        [*PULSE, "run", "--duration", "20", "--rate", "40"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "started inference" in done.stdout and "started ingest" in done.stdout
    progress = [line for line in done.stdout.splitlines() if line.startswith("raw=")]
    assert progress, done.stdout
    enriched_total = int(progress[-1].split("enriched=")[1].split()[0])
    assert enriched_total > 0, done.stdout
    assert "stopped inference  exit code 0" in done.stdout
    assert "stopped ingest     exit code 0" in done.stdout
