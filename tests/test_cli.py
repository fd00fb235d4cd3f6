"""The esfsm command line: exit codes, exact output, no tracebacks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import DEFINITIONS
from helpers import run_cli

from esfsm import __version__
from esfsm.cli import main

SCENARIOS = """\
aggregate: bankaccount
key: acc-1
headers: {x-username: ann}
scenarios:
  - name: a deposit is accepted
    given:
      - command: open_account
        data: {owner: ann, initial_balance: 150}
    when: {command: deposit, data: {amount: 5}}
    then:
      events: [{type: funds_deposited, data: {amount: 5}}]
      data: {balance: 155}
  - name: a wrong expectation fails
    given:
      - event: account_opened
        data: {owner: ann, balance: 100}
    when: {command: withdraw, data: {amount: 5}}
    then:
      rejected: {code: 422}
      state: frozen
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    defs = tmp_path / "defs"
    defs.mkdir()
    shutil.copy(DEFINITIONS / "bankaccount.yaml", defs / "bankaccount.yaml")
    monkeypatch.chdir(tmp_path)
    return defs


def run(*args: str) -> tuple[int, str, str]:
    return run_cli(main, *args)


def test_version() -> None:
    assert run("--version") == (0, f"esfsm, version {__version__}\n", "")


@pytest.mark.parametrize("command", [[], ["validate"], ["test"]])
def test_help_explains_each_command(command: list[str]) -> None:
    code, out, _ = run(*command, "--help")
    assert code == 0
    assert "Usage: " in out and ("PATHS" in out or "Commands:" in out)


def test_validate_valid_definitions(workdir: Path) -> None:
    assert run("validate", "defs") == (0, "1 definition(s) valid: bankaccount\n", "")


def test_validate_defaults_to_the_definitions_folder(workdir: Path) -> None:
    workdir.rename(workdir.parent / "definitions")
    assert run("validate")[0] == 0


def test_check_is_validate(workdir: Path) -> None:
    assert run("check", "defs") == run("validate", "defs") == (0, "1 definition(s) valid: bankaccount\n", "")


def test_validate_with_no_definition_is_an_error(workdir: Path) -> None:
    (workdir / "bankaccount.yaml").rename(workdir / "bankaccount.scenarios.yaml")
    code, out, err = run("validate", "defs")
    assert (code, out) == (1, "")
    assert err.startswith("Error: no definitions under defs (definition files are *.yaml or *.yml")


def test_validate_missing_path_is_a_usage_error(workdir: Path) -> None:
    code, _, err = run("validate", "nowhere")
    assert code == 2
    assert "Path 'nowhere' does not exist" in err


def test_test_prints_one_line_per_scenario_a_diff_and_the_totals(workdir: Path) -> None:
    (workdir / "bankaccount.scenarios.yaml").write_text(SCENARIOS)
    code, out, _ = run("test", "defs")
    assert code == 1
    assert out == (
        "PASS defs/bankaccount.scenarios.yaml:5: a deposit is accepted\n"
        "FAIL defs/bankaccount.scenarios.yaml:13: a wrong expectation fails\n"
        '    given event account_opened {"balance": 100, "owner": "ann"} on acc-1\n'
        '    when command withdraw {"amount": 5} on acc-1\n'
        '    - expected a rejection {"code": 422}\n'
        "           got: accepted, events ['funds_withdrawn']\n"
        "    - expected state 'frozen'\n"
        "           got: 'open'\n"
        "1 passed, 1 failed\n"
    )


def test_test_exits_0_when_every_scenario_passes(workdir: Path) -> None:
    (workdir / "bankaccount.scenarios.yaml").write_text(SCENARIOS.split("  - name: a wrong", maxsplit=1)[0])
    assert run("test", "defs") == (
        0,
        "PASS defs/bankaccount.scenarios.yaml:5: a deposit is accepted\n1 passed, 0 failed\n",
        "",
    )


def test_test_without_scenario_files_is_an_error(workdir: Path) -> None:
    code, _, err = run("test", "defs")
    assert code == 1
    assert err == "Error: no scenario files (*.scenarios.yaml) under defs\n"


def test_test_reports_a_malformed_scenario_file_as_a_failure(workdir: Path) -> None:
    (workdir / "bankaccount.scenarios.yaml").write_text("aggregate: bankacount\nscenarios: []\n")
    code, out, _ = run("test", "defs")
    assert code == 1
    assert "ERROR defs/bankaccount.scenarios.yaml:" in out
    assert out.endswith("0 passed, 1 failed\n")


def test_test_with_unknown_aggregate_suggests_the_name(workdir: Path) -> None:
    (workdir / "bankaccount.scenarios.yaml").write_text(
        SCENARIOS.replace("aggregate: bankaccount", "aggregate: bankacount")
    )
    code, out, _ = run("test", "defs")
    assert code == 1
    assert out.splitlines()[0] == (
        "ERROR defs/bankaccount.scenarios.yaml:1:12: error: unknown aggregate 'bankacount'; "
        "did you mean 'bankaccount'? [/aggregate]"
    )


def test_test_on_one_scenario_file_takes_the_definition_beside_it(workdir: Path) -> None:
    (workdir / "bankaccount.scenarios.yaml").write_text(SCENARIOS.split("  - name: a wrong", maxsplit=1)[0])
    assert run("test", "defs/bankaccount.scenarios.yaml") == (
        0,
        "PASS defs/bankaccount.scenarios.yaml:5: a deposit is accepted\n1 passed, 0 failed\n",
        "",
    )
    (workdir / "bankaccount.scenarios.yaml").rename(workdir / "mine.scenarios.yaml")  # no mine.yaml beside it
    code, out, _ = run("test", "defs/mine.scenarios.yaml")
    assert code == 1
    assert out.splitlines()[0] == (
        "ERROR defs/mine.scenarios.yaml:1:12: error: unknown aggregate 'bankaccount'; no definition was given "
        "with this scenario file: add its definition file, or the folder holding both, to the paths [/aggregate]"
    )


@pytest.mark.parametrize(
    ("then", "message"),
    [
        ("{events: [], rejected: {}}", "give only one of 'events' or 'rejected', not 'events' and 'rejected'"),
        ("{state: open}", "missing required key: one of 'events' or 'rejected'"),
    ],
)
def test_a_scenario_then_needs_exactly_one_of_events_or_rejected(workdir: Path, then: str, message: str) -> None:
    (workdir / "bankaccount.scenarios.yaml").write_text(
        f"aggregate: bankaccount\nscenarios:\n  - name: x\n    when: {{command: deposit}}\n    then: {then}\n"
    )
    code, out, _ = run("test", "defs")
    assert code == 1
    assert out.splitlines()[0] == f"ERROR defs/bankaccount.scenarios.yaml:5:5: error: {message} [/scenarios/0/then]"


def test_a_failing_scenario_points_at_what_differs_and_at_names_the_aggregate_does_not_declare(workdir: Path) -> None:
    (workdir / "bankaccount.scenarios.yaml").write_text(
        "aggregate: bankaccount\nheaders: {x-username: ann}\nscenarios:\n  - name: typos\n"
        "    when: {command: open_account, data: {owner: ann, initial_balance: 150}}\n"
        "    then: {events: [{type: account_opened}], state: opne, data: {balance: 10, owner: ann, extra: 1}}\n"
        "  - name: an event typo\n"
        "    when: {command: open_account, data: {owner: ann, initial_balance: 150}}\n"
        "    then: {events: [{type: acount_opened}]}\n"
    )
    code, out, _ = run("test", "defs")
    assert code == 1
    assert "           note: 'opne' is not a state of this aggregate; did you mean 'open'?\n" in out
    assert "             at: /balance: expected 10, got 150; /extra: missing\n" in out
    assert (
        "           note: 'acount_opened' is not an event type of this aggregate; did you mean 'account_opened'?\n"
        in out
    )


def test_an_unreadable_scenario_file_is_a_failure_of_its_own_and_the_others_still_run(workdir: Path) -> None:
    (workdir / "bankaccount.scenarios.yaml").write_text(SCENARIOS.split("  - name: a wrong", maxsplit=1)[0])
    (workdir / "empty.scenarios.yaml").write_text("")
    code, out, _ = run("test", "defs")
    assert code == 1
    assert out == (
        "ERROR defs/empty.scenarios.yaml:1:1: error: the file is empty; expected a scenario file\n"
        "PASS defs/bankaccount.scenarios.yaml:5: a deposit is accepted\n1 passed, 1 failed\n"
    )


def test_test_refuses_invalid_definitions(workdir: Path) -> None:
    (workdir / "bankaccount.yaml").write_text(
        (workdir / "bankaccount.yaml").read_text().replace("to: frozen", "to: frozn")
    )
    code, out, err = run("test", "defs")
    assert code == 1
    assert "'frozn' is not a declared state; did you mean 'frozen'?" in out
    assert err == "Error: the definitions have errors; fix them before running scenarios\n"


@pytest.mark.parametrize("now", ["2025-03-01", "yesterday", "2025-13-01T10:00:00Z"])
def test_a_scenario_clock_must_be_an_rfc_3339_date_and_time(workdir: Path, now: str) -> None:
    (workdir / "bankaccount.scenarios.yaml").write_text(
        f'aggregate: bankaccount\nnow: "{now}"\n'
        + SCENARIOS.split("\n", 1)[1].split("  - name: a wrong", maxsplit=1)[0]
    )
    code, out, _ = run("test", "defs")
    assert code == 1
    assert f"error: '{now}' is not an RFC 3339 time such as '2025-01-01T09:00:00Z' [/now]" in out, out
