"""Both engines agree where input is at the edge of what NATS can carry: `esfsm test --nats`
runs scenarios that hit those edges and must report them the same way (never abort)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DEFINITIONS, FIXTURES

from esfsm import MemoryEngine, load_project
from esfsm.errors import ScenarioError, UnknownAggregateError

ENV = {k: v for k, v in os.environ.items() if k != "NATS_URL"}


def test_scenarios_at_the_edges_give_the_same_results_on_both_engines(tmp_path: Path) -> None:
    for name in ("order", "ticket"):
        (tmp_path / f"{name}.yaml").write_text((DEFINITIONS / f"{name}.yaml").read_text())
        (tmp_path / f"{name}.scenarios.yaml").write_text((FIXTURES / "parity" / f"{name}.scenarios.yaml").read_text())
    done = subprocess.run(
        [sys.executable, "-m", "esfsm", "test", "--nats", str(tmp_path)],
        env=ENV,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    memory, nats = done.stdout.split("-- nats engine\n")
    memory = memory.removeprefix("-- memory engine\n")
    assert memory == nats.rsplit("\n", 2)[0] + "\n", done.stdout  # the same lines, the total aside
    assert "given[0]: invalid entity key 'a b'" in memory
    assert memory.count("PASS") == 3 and memory.count("FAIL") == 1, memory
    assert done.stdout.endswith("6 passed, 2 failed\n") and done.returncode == 1


@pytest.fixture
def engine() -> MemoryEngine:
    return MemoryEngine(load_project(DEFINITIONS).aggregates)  # a mapping of them is taken too


def test_the_memory_engine_refuses_wrong_arguments_with_clear_errors(engine: MemoryEngine) -> None:
    with pytest.raises(UnknownAggregateError, match="unknown aggregate 'bankacount'; did you mean 'bankaccount'"):
        engine.state("bankacount", "k")
    with pytest.raises(KeyError):  # as before: an UnknownAggregateError is a KeyError too
        engine.history("bankacount", "k")
    with pytest.raises(TypeError, match="the command must be a string, got NoneType"):
        engine.handle("bankaccount", None, "k", {})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="header 'x-esfsm-command-id': names and values must be strings"):
        engine.handle("bankaccount", "deposit", "k", {}, {"x-esfsm-command-id": 5})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="cannot travel as a NATS header name"):
        engine.handle("bankaccount", "deposit", "k", {}, {"x user": "ann"})
    with pytest.raises(TypeError, match="record takes CloudEvents"):
        engine.record("bankaccount", "k", [{"type": "account_opened"}])  # type: ignore[list-item]
    with pytest.raises(ScenarioError, match="invalid entity key 'a b'"):
        engine.record("bankaccount", "a b", [])
    with pytest.raises(TypeError, match="MemoryEngine runs compiled aggregates"):
        MemoryEngine(["bankaccount"])  # type: ignore[list-item]


def test_payload_values_that_are_not_json_are_a_400_not_a_500(engine: MemoryEngine) -> None:
    import datetime as dt

    ann = {"x-username": "ann"}
    assert engine.handle("bankaccount", "open_account", "k", {"owner": "a", "initial_balance": 150}, ann).accepted
    for payload, message in [
        ({"amount": {1, 2}}, "a set value is not JSON"),
        ({"amount": b"5"}, "a bytes value is not JSON"),
        ({"amount": dt.datetime(2025, 1, 1, tzinfo=dt.UTC)}, "a datetime value is not JSON"),
        ({1: 5}, "a key 1 is not a string, as JSON needs"),
        ({"amount": float("nan")}, "nan is not a finite number"),
    ]:
        decision = engine.handle("bankaccount", "deposit", "k", payload, ann)
        assert (decision.code, decision.message) == (400, message)  # type: ignore[union-attr]
    assert engine.handle("bankaccount", "deposit", "k", {"amount": 5}, {"x-username": "  ann  "}).accepted
