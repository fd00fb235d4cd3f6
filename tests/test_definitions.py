"""Every example definition is a test: it validates cleanly and its scenarios pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import DEFINITIONS

from esfsm.project import check_paths
from esfsm.scenarios import run_scenario_files

EXAMPLES = sorted(p for p in DEFINITIONS.glob("*.yaml") if not p.name.endswith(".scenarios.yaml"))


def test_there_are_at_least_three_examples() -> None:
    assert {p.stem for p in EXAMPLES} >= {"bankaccount", "order"}
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_validates_without_findings_and_has_passing_scenarios(path: Path) -> None:
    scenarios = path.with_name(f"{path.stem}.scenarios.yaml")
    assert scenarios.exists(), f"{path.name} has no scenario file"
    project = check_paths([path, scenarios])
    assert [str(f) for f in project.findings] == []
    report = run_scenario_files(project)
    failures = [line for line in report.lines() if not line.startswith("PASS")]
    assert failures == []
    assert report.failed == 0 and report.passed >= len(project.aggregates[path.stem].commands) * 2


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_scenarios_cover_every_command_accepted_and_rejected(path: Path) -> None:
    import yaml

    scenarios = yaml.safe_load(path.with_name(f"{path.stem}.scenarios.yaml").read_text())["scenarios"]
    project = check_paths([path])
    commands = set(project.aggregates[path.stem].commands)
    accepted = {s["when"]["command"] for s in scenarios if "events" in s["then"]}
    rejected = {s["when"]["command"] for s in scenarios if "rejected" in s["then"]}
    assert commands - accepted == set(), "commands never accepted in a scenario"
    assert commands - rejected == set(), "commands never rejected in a scenario"
