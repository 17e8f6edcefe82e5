"""Topic definitions: the shipped file is complete and sane, and bad files say what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from pulse.settings import Settings
from pulse.topics import TopicError, load_specs

NAMES = Settings(_env_file=None).topics.by_role()


def test_shipped_file_defines_every_role() -> None:
    specs = {s.role: s for s in load_specs(Settings(_env_file=None).topics.definitions, NAMES)}
    assert set(specs) == set(NAMES)
    assert specs["raw"].partitions == specs["enriched"].partitions >= 3  # the unit of parallelism
    assert "compact" in specs["alerts"].config["cleanup.policy"]  # replays overwrite, not duplicate
    assert all(int(s.config["retention.ms"]) > 0 for s in specs.values())


def test_names_come_from_settings_and_replication_can_be_overridden() -> None:
    names = {**NAMES, "raw": "tenant-a.posts.raw"}
    specs = {s.role: s for s in load_specs(Settings(_env_file=None).topics.definitions, names, 3)}
    assert specs["raw"].name == "tenant-a.posts.raw"
    assert {s.replication_factor for s in specs.values()} == {3}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("topics:\n  raw: {partitions: 1}\n", "no definition for roles"),
        ("topics:\n  rawr: {partitions: 1}\n", "unknown topic roles ['rawr']"),
    ],
)
def test_bad_files_are_named(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text(body)
    with pytest.raises(TopicError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_specs(path, NAMES)


def test_zero_partitions_rejected(tmp_path: Path) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text("topics:\n" + "".join(f"  {role}: {{partitions: 0}}\n" for role in NAMES))
    with pytest.raises(TopicError, match="partitions must be a positive integer"):
        load_specs(path, NAMES)


def test_missing_file_says_which_setting(tmp_path: Path) -> None:
    with pytest.raises(TopicError, match="TOPICS__DEFINITIONS"):
        load_specs(tmp_path / "nope.yaml", NAMES)
