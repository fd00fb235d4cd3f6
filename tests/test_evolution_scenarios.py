"""Scenarios with older histories (issue #14): a given event may carry a name the event was stored
under before and an older version; it is stored as written and read through the upcasters, on the
in-memory engine and on the NATS runtime (`esfsm test --nats`) alike."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from nats_support import ROOT

from esfsm import contract, reading
from esfsm.cli import main
from esfsm.compiler import CompiledAggregate
from esfsm.engine import MemoryEngine
from esfsm.project import load_project
from esfsm.runtime.jetstream import read_subject
from esfsm.runtime.testing import NatsBackend
from esfsm.scenarios import run_scenario_files

UPCAST = ROOT / "tests" / "fixtures" / "upcast"
DEFINITION = (UPCAST / "ledger.yaml").read_text()

# One scenario whose history holds every kind of old event, on a key of its own.
OLD_HISTORY = """\
aggregate: ledger
key: led-9
now: "2025-01-01T09:00:00Z"
scenarios:
  - name: old history is stored as written and read upcast
    given:
      - event: ledger_opened
        version: 1
        data: {owner: ann}
      - event: money_added
        version: 1
        data: {amount: 2}
      - event: ledger_frozen
    when:
      command: credit
      data: {cents: 7}
    then:
      events: [{type: credited, data: {cents: 7}}]
      state: open
      data: {owner: ann, currency: EUR, cents: 207, credits: 2}
      version: 4
"""

# (type name, eventversion, data) of the events the scenario above stores, in order
STORED_AS_WRITTEN = [
    ("ledger_opened", 1, {"owner": "ann"}),
    ("money_added", 1, {"amount": 2}),
    ("ledger_frozen", 1, {}),
    ("credited", 2, {"cents": 7}),
]


def project_with(tmp_path: Path, scenarios: str) -> Path:
    (tmp_path / "ledger.yaml").write_text(DEFINITION)
    (tmp_path / "ledger.scenarios.yaml").write_text(scenarios)
    return tmp_path


def test_the_upcast_fixture_passes_on_both_engines() -> None:
    """The fixture's scenarios expect the upcast data (a currency version 1 never had, whole units
    as cents, a frozen ledger that is open): they pass only when given events are read upcast."""
    done = CliRunner().invoke(main, ["test", "--nats", str(UPCAST)])
    assert done.exit_code == 0, done.output
    assert "-- nats engine" in done.output
    assert "6 passed, 0 failed" in done.output, done.output


def test_the_in_memory_engine_stores_given_events_as_written(tmp_path: Path) -> None:
    project = load_project(project_with(tmp_path, OLD_HISTORY))
    engines: list[MemoryEngine] = []

    def factory(aggregate: CompiledAggregate, clock: Callable[[], dt.datetime]) -> MemoryEngine:
        engines.append(MemoryEngine([aggregate], clock=clock))
        return engines[-1]

    report = run_scenario_files(project, factory)
    assert [r.problems for r in report.results] == [[]], list(report.lines())
    log = engines[0].store.load("ledger", "led-9")
    assert [(e.get_type(), reading.stored_version(e), e.get_data()) for e in log] == STORED_AS_WRITTEN
    compiled = project.aggregates["ledger"]
    assert reading.read(compiled, compiled.initial_state("led-9"), log[1]).get_data() == {"cents": 200}


def test_esfsm_test_nats_stores_given_events_under_their_old_name_and_version(tmp_path: Path) -> None:
    """On the real stream: the subject ends in the name as written, the body carries its
    eventversion; the runtime's snapshot is the fold of the upcast events."""
    project = load_project(project_with(tmp_path, OLD_HISTORY))
    compiled = project.aggregates["ledger"]
    with NatsBackend(project.aggregates.values()) as backend:
        report = run_scenario_files(project, backend.engine)
        assert [r.problems for r in report.results] == [[]], list(report.lines())
        store = backend.runtime.services["ledger"].store

        async def stored() -> list[tuple[str, bytes]]:
            subjects = contract.entity_subjects(compiled.model.nats.events, "led-9")
            return [(s.subject, s.body) async for s in read_subject(backend.nc, store.names.stream, subjects)]

        messages = backend.loop.run(stored())
        snapshot, _ = backend.loop.run(store.snapshot("led-9"))
    assert [subject for subject, _ in messages] == [f"ledger.events.led-9.{t}" for t, _, _ in STORED_AS_WRITTEN]
    bodies = [json.loads(body) for _, body in messages]
    assert [(b["type"], b["eventversion"], b["data"]) for b in bodies] == STORED_AS_WRITTEN
    assert snapshot is not None
    assert snapshot.state == reading.replay(compiled, "led-9", [body for _, body in messages])
    assert (snapshot.state.state, snapshot.state.data["cents"], snapshot.state.data["currency"]) == ("open", 207, "EUR")


@pytest.mark.parametrize(
    ("given", "expected", "rule"),
    [
        (
            "{event: credited, version: 3, data: {cents: 1}}",
            "error: event 'credited' is at version 2: a given event cannot be stored with a newer version (3)",
            "scenario-event-version",
        ),
        (
            "{event: money_added, version: 5, data: {amount: 1}}",
            "error: event 'money_added' (read as 'credited') is at version 2",
            "scenario-event-version",
        ),
        (
            "{event: money_addded, data: {amount: 1}}",
            (
                "error: unknown event 'money_addded': no event of aggregate 'ledger' has that name or lists it "
                "under `formerly`; did you mean 'money_added'?"
            ),
            "scenario-event",
        ),
    ],
)
def test_a_given_event_nobody_knows_or_newer_than_its_definition_is_refused_at_its_place(
    tmp_path: Path, given: str, expected: str, rule: str
) -> None:
    scenarios = (
        "aggregate: ledger\nscenarios:\n  - name: bad history\n    given:\n      - {event: ledger_opened, data: "
        "{owner: ann, currency: EUR}}\n      - " + given + "\n    when: {command: close}\n    then: {events: []}\n"
    )
    folder = project_with(tmp_path, scenarios)
    done = CliRunner().invoke(main, ["test", str(folder)])
    assert done.exit_code == 1, done.output
    assert "Traceback" not in done.output
    line = next(line for line in done.output.splitlines() if line.startswith("ERROR"))
    where = "version" if rule == "scenario-event-version" else "event"
    column = 9 + given.index(f"{where}:") + len(f"{where}: ")
    assert line.startswith(f"ERROR {folder / 'ledger.scenarios.yaml'}:6:{column}: "), line
    assert expected in line and f"[/scenarios/0/given/1/{where}]" in line, line
