"""Scenario files: given a history, when a command arrives, then events or a rejection.

A scenario file (``<name>.scenarios.yaml``) names one aggregate and lists
scenarios; each runs on a fresh engine (the in-memory one by default), so
scenarios prove behaviour without a server. A given event may be older history:
a name the event was stored under before and an older `version`; it is stored so,
and read through the definition's upcasters like any stored event. See
docs/dsl.md for the format.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from cloudevents.core.base import BaseCloudEvent

from esfsm.checks import schema_findings
from esfsm.compiler import CompiledAggregate
from esfsm.engine import MemoryEngine
from esfsm.errors import EsfsmError
from esfsm.events import new_event
from esfsm.findings import Finding, did_you_mean, one_of
from esfsm.loader import Document
from esfsm.project import Project
from esfsm.values import Decision, EntityState

DEFAULT_KEY = "test-1"


class StepFailed(Exception):
    """A scenario's step or expectation did not hold; the message says how."""


@dataclass
class ScenarioResult:
    file: str
    line: int
    name: str
    problems: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass
class Report:
    results: list[ScenarioResult] = field(default_factory=list)
    file_findings: list[Finding] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> int:
        return sum(not r.passed for r in self.results) + len({f.file for f in self.file_findings})

    def lines(self, verbose: bool = False) -> Iterator[str]:
        for finding in self.file_findings:
            yield f"ERROR {finding}"
        for result in self.results:
            yield f"{'PASS' if result.passed else 'FAIL'} {result.file}:{result.line}: {result.name}"
            if verbose or not result.passed:
                for step in result.steps:
                    yield f"    {step}"
            for problem in result.problems:
                for i, text in enumerate(problem.splitlines()):
                    yield f"    {'- ' if i == 0 else '  '}{text}"


class ScenarioEngine(Protocol):
    """What a scenario needs of an engine: MemoryEngine, or the NATS runtime's NatsScenarioEngine."""

    def handle(
        self, aggregate: str, command: str, key: str, payload: Any = None, headers: dict[str, str] | None = None
    ) -> Decision: ...

    def state(self, aggregate: str, key: str) -> EntityState: ...

    def record(self, aggregate: str, key: str, events: Iterable[BaseCloudEvent]) -> EntityState: ...


# An engine factory: given the compiled aggregate and a clock, a fresh engine.
EngineFactory = Callable[[CompiledAggregate, Callable[[], dt.datetime]], ScenarioEngine]


def memory_engine(aggregate: CompiledAggregate, clock: Callable[[], dt.datetime]) -> MemoryEngine:
    return MemoryEngine([aggregate], clock=clock)


def run_scenario_files(project: Project, engine_factory: EngineFactory = memory_engine) -> Report:
    report = Report()
    started = dt.datetime.now(dt.UTC)
    for doc in project.scenario_documents:
        problems = schema_findings(doc, "scenarios")
        aggregate_name = doc.data.get("aggregate")
        if not problems and aggregate_name not in project.aggregates:
            known = project.aggregates
            hint = (
                did_you_mean(str(aggregate_name), known) or f"; expected one of {one_of(known)}"
                if known
                else "; no definition was given with this scenario file: add its definition file, or "
                "the folder holding both, to the paths"
            )
            problems = [doc.finding("/aggregate", f"unknown aggregate {aggregate_name!r}{hint}", "scenario-aggregate")]
        if not problems:
            problems = list(_time_findings(doc))
        if not problems:
            problems = list(_given_findings(doc, project.aggregates[aggregate_name]))
        if problems:
            report.file_findings.extend(problems)
            continue
        aggregate = project.aggregates[aggregate_name]
        for index, scenario in enumerate(doc.data["scenarios"]):
            report.results.append(_run(doc, index, scenario, aggregate, engine_factory, started))
    return report


def _time_findings(doc: Document) -> Iterator[Finding]:
    places = [("/now", doc.data.get("now"))]
    places += [(f"/scenarios/{i}/now", s.get("now")) for i, s in enumerate(doc.data["scenarios"])]
    for ptr, value in places:
        if value is not None and _parse_time(value) is None:
            yield doc.finding(ptr, f"{value!r} is not an RFC 3339 time such as '2025-01-01T09:00:00Z'", "scenario-now")


def _given_findings(doc: Document, aggregate: CompiledAggregate) -> Iterator[Finding]:
    """A given event must name an event of the aggregate, by its name or one it was stored under
    before (`formerly`), and its version must be one the definition can read: older history is
    given as it was stored, never history from a newer definition."""
    for i, scenario in enumerate(doc.data["scenarios"]):
        for j, step in enumerate(scenario.get("given", [])):
            if "event" not in step:
                continue
            where = f"/scenarios/{i}/given/{j}"
            name = step["event"]
            reader = aggregate.readers.get(name)
            if reader is None:
                yield doc.finding(
                    f"{where}/event",
                    f"unknown event {name!r}: no event of aggregate {aggregate.name!r} has that name or lists it "
                    f"under `formerly`{did_you_mean(name, aggregate.readers)}",
                    "scenario-event",
                )
            elif step.get("version", reader.version) > reader.version:
                read_as = "" if reader.name == name else f" (read as {reader.name!r})"
                yield doc.finding(
                    f"{where}/version",
                    f"event {name!r}{read_as} is at version {reader.version}: a given event cannot be stored "
                    f"with a newer version ({step['version']}); give the version it was stored with",
                    "scenario-event-version",
                )


_DATE_TIME = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d(:\d\d(\.\d+)?)?([Zz]|[+-]\d\d:?\d\d)?")


def _parse_time(value: str) -> dt.datetime | None:
    """An RFC 3339 date and time (with no offset: UTC); None for anything else, a date alone too."""
    if not isinstance(value, str) or not _DATE_TIME.fullmatch(value):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.upper())
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _run(
    doc: Document,
    index: int,
    scenario: dict[str, Any],
    aggregate: CompiledAggregate,
    engine_factory: EngineFactory,
    started: dt.datetime,
) -> ScenarioResult:
    where = f"/scenarios/{index}"
    result = ScenarioResult(doc.path, doc.position(where).line, scenario["name"])
    now_text = scenario.get("now", doc.data.get("now"))
    now = _parse_time(now_text) if now_text else started
    assert now is not None
    engine = engine_factory(aggregate, lambda: now)
    default_key = doc.data.get("key", DEFAULT_KEY)
    default_headers = doc.data.get("headers", {})
    try:
        for i, step in enumerate(scenario.get("given", [])):
            key = step.get("key", default_key)
            if "event" in step:
                shown = f"{step['event']} v{step['version']}" if "version" in step else step["event"]
                result.steps.append(f"given event {shown} {_short(step.get('data', {}))} on {key}")
                _record(engine, aggregate, key, step, now, f"given[{i}]")
            else:
                result.steps.append(f"given command {step['command']} {_short(step.get('data', {}))} on {key}")
                decision = _send(engine, aggregate, step, default_key, default_headers)
                if not decision.accepted:
                    raise StepFailed(
                        f"given[{i}]: command {step['command']!r} was rejected "
                        f"({decision.code}: {decision.message}); a given command must be accepted"
                    )
        when = scenario["when"]
        key = when.get("key", default_key)
        result.steps.append(f"when command {when['command']} {_short(when.get('data', {}))} on {key}")
        decision = _send(engine, aggregate, when, default_key, default_headers)
        result.problems.extend(_compare(scenario["then"], decision, engine, aggregate, key))
    except StepFailed as err:
        result.problems.append(str(err))
    except EsfsmError as err:
        result.problems.append(f"error: {err}")
    return result


def _send(
    engine: ScenarioEngine,
    aggregate: CompiledAggregate,
    step: dict[str, Any],
    default_key: str,
    default_headers: dict[str, str],
) -> Decision:
    merged = {**default_headers, **step.get("headers", {})}
    headers = {k: v for k, v in merged.items() if v is not None}  # null removes a default header
    return engine.handle(aggregate.name, step["command"], step.get("key", default_key), step.get("data", {}), headers)


def _record(
    engine: ScenarioEngine, aggregate: CompiledAggregate, key: str, step: dict[str, Any], now: dt.datetime, label: str
) -> None:
    name = step["event"]
    reader = aggregate.readers.get(name)  # the file's checks refuse unknown names: this is a guard
    if reader is None:
        raise StepFailed(f"{label}: unknown event {name!r}{did_you_mean(name, aggregate.readers)}")
    current = engine.state(aggregate.name, key)
    version = step.get("version", reader.version)  # stored as written: name and version; read upcast
    event = new_event(aggregate.name, name, key, current.version + 1, step.get("data", {}), now, event_version=version)
    try:
        engine.record(aggregate.name, key, [event])
    except EsfsmError as err:
        raise StepFailed(f"{label}: {err}") from err


def _compare(
    then: dict[str, Any], decision: Decision, engine: ScenarioEngine, aggregate: CompiledAggregate, key: str
) -> Iterator[str]:
    if "rejected" in then:
        expected = then["rejected"]
        if decision.accepted:
            emitted = [e.get_type() for e in decision.events]
            yield f"expected a rejection {_short(expected)}\n     got: accepted, events {emitted}"
        else:
            if "code" in expected and expected["code"] != decision.code:
                yield f"expected rejection code {expected['code']}\n     got: {decision.code} ({decision.message})"
            if "message" in expected and expected["message"] not in decision.message:
                yield f"expected the message to contain {expected['message']!r}\n     got: {decision.message!r}"
    elif not decision.accepted:
        yield f"expected the command to be accepted\n     got: rejected {decision.code}: {decision.message}"
    else:
        got: list[dict[str, Any]] = [{"type": e.get_type(), "data": e.get_data()} for e in decision.events]
        wanted = then["events"]
        if [w["type"] for w in wanted] != [g["type"] for g in got]:
            yield (
                f"expected events {[w['type'] for w in wanted]}\n     got: {[g['type'] for g in got]}"
                + "".join(_not_declared("an event type", w["type"], aggregate.events) for w in wanted)
            )
        else:
            for i, (w, g) in enumerate(zip(wanted, got, strict=True)):  # same types, so same length
                if "data" in w and not is_subset(w["data"], g["data"]):
                    yield (
                        f"event {i} ({g['type']}) data differs\n expected: {_short(w['data'])}\n"
                        f"      got: {_short(g['data'])}{_where(w['data'], g['data'])}"
                    )
    after = engine.state(aggregate.name, key)
    if "state" in then and then["state"] != after.state:
        yield (
            f"expected state {then['state']!r}\n     got: {after.state!r}"
            + _not_declared("a state", then["state"], aggregate.model.states)
        )
    if "data" in then and not is_subset(then["data"], dict(after.data)):
        yield (
            f"entity data differs\n expected: {_short(then['data'])}\n      got: {_short(dict(after.data))}"
            f"{_where(then['data'], dict(after.data))}"
        )
    if "version" in then and then["version"] != after.version:
        yield f"expected version {then['version']}\n     got: {after.version}"


def _not_declared(what: str, name: Any, declared: Any) -> str:
    """A note when a scenario expects a name its aggregate does not declare (a typo, most likely)."""
    if not isinstance(name, str) or name in declared:
        return ""
    return f"\n     note: {name!r} is not {what} of this aggregate{did_you_mean(name, declared)}"


def _where(expected: Any, actual: Any) -> str:
    """Where a subset match fails, as JSON pointers (the first few)."""
    found = list(differences(expected, actual))
    if not found:
        return ""
    shown = "; ".join(f"{path or '/'}: {problem}" for path, problem in found[:5])
    return f"\n       at: {shown}" + (f" (and {len(found) - 5} more)" if len(found) > 5 else "")


def differences(expected: Any, actual: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(JSON pointer, what is wrong there) for each place where is_subset(expected, actual) fails."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        for k, v in expected.items():
            where = f"{path}/{str(k).replace('~', '~0').replace('/', '~1')}"
            if k not in actual:
                yield where, "missing"
            else:
                yield from differences(v, actual[k], where)
    elif isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            yield from differences(e, a, f"{path}/{i}")
    elif not is_subset(expected, actual):
        if isinstance(expected, list) and isinstance(actual, list):
            yield path, f"expected {len(expected)} items, got {len(actual)}"
        else:
            yield path, f"expected {_short(expected)}, got {_short(actual)}"


def is_subset(expected: Any, actual: Any) -> bool:
    """Expected mappings match when each listed key matches; lists item by item; scalars by equality."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and is_subset(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(is_subset(e, a) for e, a in zip(expected, actual, strict=True))
        )
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    return bool(expected == actual)


def _short(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
