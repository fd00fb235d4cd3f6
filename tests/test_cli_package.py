"""The esfsm command line as a package: every command is found by its name, loaded only
when it is asked for, and reachable through `python -m esfsm`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from conftest import DEFINITIONS, ROOT

from esfsm.cli import COMMANDS, main

EVERY_COMMAND = ["docs", "explain", "graph", "history", "init", "rebuild", "run", "send", "state", "test", "validate"]


def test_the_help_lists_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    listed = result.stdout.split("Commands:\n")[1].splitlines()
    assert [line.split()[0] for line in listed] == EVERY_COMMAND


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_is_found_under_its_own_name(name: str) -> None:
    with click.Context(main) as ctx:
        command = main.get_command(ctx, name)
    assert command is not None and command.name == name


def test_a_command_loads_neither_the_authoring_tools_nor_the_docs_unless_asked_for() -> None:
    code = (
        "import sys\nfrom esfsm.cli import main\n"
        "try:\n    main(['state', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(' '.join(m for m in sys.modules if m.startswith('esfsm')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = set(done.stdout.split("\n")[-2].split())
    assert "esfsm.cli.client" in loaded
    assert not loaded & {"esfsm.authoring.commands", "esfsm.docgen", "esfsm.cli.definitions", "esfsm.cli.runtime"}


def test_python_dash_m_esfsm_runs_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "esfsm", "graph", str(DEFINITIONS / "bankaccount.yaml")],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("---\ntitle: bankaccount\n---\nstateDiagram-v2\n")


def test_rebuild_takes_a_definition_file_where_the_aggregate_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No server runs here: the refusal to go on without one shows the file was read as bankaccount."""
    monkeypatch.delenv("NATS_URL", raising=False)
    monkeypatch.chdir(ROOT)
    args = ["rebuild", "definitions/bankaccount.yaml", "--store-dir", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == "Error: no NATS server: pass --server, set NATS_URL or start `esfsm run`\n"
    result = CliRunner().invoke(main, ["rebuild", "definitions/", "--store-dir", str(tmp_path)])
    assert result.stderr == (
        "Error: definitions/ defines 3 aggregates ('bankaccount', 'order', 'ticket'): give the "
        "name of one, and definitions/ as PATHS\n"
    )
