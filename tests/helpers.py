"""Small helpers more than one test module needs: the CLI in-process, fresh keys, command headers.

What needs a nats-server or a runtime process is in nats_support.py; the raw clients
of the hostile suites are in hostile_support.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import click
from click.testing import CliRunner, Result

from esfsm.cli import main

ENV_WITHOUT_SERVER = {k: v for k, v in os.environ.items() if k != "NATS_URL"}  # the CLI finds no server by itself


def esfsm_process(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The esfsm command as a real process in cwd (NATS_URL unset), its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "esfsm", *args],
        cwd=cwd,
        env=ENV_WITHOUT_SERVER,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def invoke(command: click.Command, *args: str, env: dict[str, str | None] | None = None) -> Result:
    """command run in-process by click's CliRunner; the test fails if an exception other
    than SystemExit escaped (a user error exits, it never raises)."""
    result = CliRunner().invoke(command, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def run_cli(command: click.Command, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of command run in-process."""
    result = invoke(command, *args)
    return result.exit_code, result.stdout, result.stderr


def validate(*args: str) -> Result:
    """`esfsm validate ARGS` in-process: findings (exit 1) or success (exit 0), never a traceback."""
    result = CliRunner().invoke(main, ["validate", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code in (0, 1), result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    return result


def fresh_key(prefix: str) -> str:
    """An entity key no other test uses: prefix, a dash and 12 hex digits."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def bank_headers(key: str, command_id: str | None = None, **extra: str) -> dict[str, str]:
    """Headers of a command for key from user ann (whom bankaccount authorizes), with a command id if given."""
    headers: dict[str, str] = {"x-ergonats-entity-key": key, "x-username": "ann", **extra}
    if command_id:
        headers["x-esfsm-command-id"] = command_id
    return headers
