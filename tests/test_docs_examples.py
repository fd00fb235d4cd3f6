"""The examples in docs/dsl.md and docs/evolution.md work as the pages say: users copy them."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
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


# -- docs/evolution.md: its excerpts are the example files, its outputs what the commands print -------

EVOLUTION = (ROOT / "docs" / "evolution.md").read_text()
EXAMPLES = ROOT / "docs" / "evolution"
KINDS = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())


def test_every_change_kind_the_page_names_has_its_example_files() -> None:
    assert KINDS == [
        "add-a-field",
        "fix-an-apply",
        "remove-a-state",
        "rename-an-event",
        "retire-a-command",
        "split-a-state",
    ]
    for kind in KINDS:
        assert (EXAMPLES / kind / "after" / "bankaccount.yaml").is_file()
        assert (EXAMPLES / kind / "unsafe" / "bankaccount.yaml").is_file()
        assert f"evolution/{kind}/after" in EVOLUTION and f"evolution/{kind}/unsafe" in EVOLUTION


def test_each_excerpt_on_the_evolution_page_is_in_the_file_it_names() -> None:
    excerpts = re.findall(r"<!-- excerpt: (\S+) -->\n```yaml\n(.*?)```", EVOLUTION, re.DOTALL)
    assert len(excerpts) >= 8
    for path, text in excerpts:
        assert text in (ROOT / path).read_text(), f"{path} no longer holds:\n{text}"


@pytest.mark.parametrize("command", re.findall(r"```console\n\$ (esfsm validate .*?)\n", EVOLUTION))
def test_each_validate_output_on_the_evolution_page_is_what_the_command_prints(command: str) -> None:
    """Run from the repository's root, as the page shows: the findings, their positions and the
    summary line, exactly."""
    shown = re.search(rf"```console\n\$ {re.escape(command)}\n(.*?)```", EVOLUTION, re.DOTALL).group(1)  # type: ignore[union-attr]
    done = subprocess.run(
        [sys.executable, "-m", "esfsm", *shlex.split(command)[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout + done.stderr == shown
    assert done.returncode == (1 if "/unsafe " in command else 0)


@pytest.mark.parametrize("kind", KINDS)
def test_each_after_definition_is_valid_and_its_scenarios_pass_on_both_engines(kind: str) -> None:
    after = str(EXAMPLES / kind / "after")
    validated = CliRunner().invoke(main, ["validate", after])
    assert validated.exit_code == 0, validated.output
    tested = CliRunner().invoke(main, ["test", "--nats", after])
    assert tested.exit_code == 0, tested.output
    assert "-- nats engine" in tested.output and " 0 failed" in tested.output, tested.output


def test_the_evolution_page_links_to_the_upgrade_order_in_reliability_md() -> None:
    assert "reliability.md#definition-changes-and-rolling-upgrades" in EVOLUTION
    assert "## Definition changes and rolling upgrades" in (ROOT / "docs" / "reliability.md").read_text()
