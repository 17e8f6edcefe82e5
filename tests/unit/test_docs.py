"""Docs match the code: the README's settings table is generated from the settings models."""

from __future__ import annotations

import re
from pathlib import Path

from pulse.settings import markdown_reference

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_settings_table_matches_the_code() -> None:
    block = re.search(r"<!-- settings-table:.*?-->\n(.*?)<!-- end settings-table -->", README, re.S)
    assert block is not None, "README lost its settings-table markers"
    assert block.group(1) == markdown_reference(), "run `make docs` to regenerate the README settings table"


def test_readme_quick_start_is_the_two_commands() -> None:
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = re.findall(r"^make (\w+)", quick, re.M)
    assert commands == ["run", "test"]
