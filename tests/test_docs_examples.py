"""The examples in docs/dsl.md work as the page says: users copy them."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from conftest import ROOT

from esfsm.cli import main

DSL = (ROOT / "docs" / "dsl.md").read_text()


def yaml_block(after_heading: str) -> str:
    """The first ```yaml block after a heading of docs/dsl.md."""
    section = DSL[DSL.index(after_heading) :]
    return re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1)  # type: ignore[union-attr]


def test_the_complete_definition_and_the_scenario_example_pass_together(tmp_path: Path) -> None:
    (tmp_path / "bankaccount.yaml").write_text(yaml_block("## A complete definition"))
    (tmp_path / "bankaccount.scenarios.yaml").write_text(yaml_block("## Scenario files"))
    validated = CliRunner().invoke(main, ["validate", str(tmp_path)])
    assert validated.exit_code == 0, validated.output
    tested = CliRunner().invoke(main, ["test", str(tmp_path)])
    assert tested.exit_code == 0, tested.output
    assert "3 passed, 0 failed" in tested.output, tested.output
