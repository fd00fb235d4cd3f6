"""The in-memory engine: entities and their event logs in memory.

It runs the same compiled aggregates as the NATS runtime, with the same
request semantics: entity-key validation, ``x-esfsm-expected-version``
(optimistic concurrency) and ``x-esfsm-command-id`` (idempotency). Scenario
tests, ``esfsm test`` and most of the test suite run on it.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cloudevents.core.base import BaseCloudEvent

from esfsm import reading
from esfsm.command_path import (  # noqa: F401  (re-exported: the request checks were defined here)
    INT64,
    MAX_DEPTH,
    Prepared,
    check_command_id,
    check_key,
    check_payload,
    clip,
    expected_version,
    prepare,
    state_too_large,
    step,
    version_conflict,
)
from esfsm.compiler import CompiledAggregate
from esfsm.errors import ScenarioError, UnknownAggregateError
from esfsm.findings import did_you_mean, one_of
from esfsm.values import (
    HEADER_NAME,
    NOT_FOUND,
    Accepted,
    Decision,
    EntityState,
    ErrorDetail,
    Rejected,
)

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def unknown_aggregate(name: str, known: Iterable[str]) -> Rejected:
    known = list(known)
    message = f"unknown aggregate {name!r}{did_you_mean(name, known) or f'; expected one of {one_of(known)}'}"
    return Rejected(NOT_FOUND, message, (ErrorDetail("", message),))


class EventStore(Protocol):
    """Where an entity's events live. The NATS runtime implements it on JetStream."""

    def load(self, aggregate: str, key: str) -> list[BaseCloudEvent]: ...

    # F811: expected_version here is the parameter, not the function re-exported above
    def append(self, aggregate: str, key: str, expected_version: int, events: Iterable[BaseCloudEvent]) -> None: ...  # noqa: F811


class ConcurrencyError(Exception):
    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"expected version {expected}, found {actual}")
        self.expected, self.actual = expected, actual


@dataclass
class MemoryEventStore:
    """Event logs in a dict; append is all-or-nothing and checks the expected version."""

    logs: dict[tuple[str, str], list[BaseCloudEvent]] = field(default_factory=dict)

    def load(self, aggregate: str, key: str) -> list[BaseCloudEvent]:
        return list(self.logs.get((aggregate, key), ()))

    # F811: expected_version here is the parameter, not the function re-exported above
    def append(self, aggregate: str, key: str, expected_version: int, events: Iterable[BaseCloudEvent]) -> None:  # noqa: F811
        log = self.logs.setdefault((aggregate, key), [])
        if len(log) != expected_version:
            raise ConcurrencyError(expected_version, len(log))
        log.extend(events)


def require_text(what: str, value: object) -> None:
    """A TypeError naming what, unless value is a string."""
    if not isinstance(value, str):
        raise TypeError(f"the {what} must be a string, got {type(value).__name__} {value!r:.60}")


def wire_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """headers as the runtime receives them: string names NATS can carry and string values,
    stripped as NATS strips them; TypeError or ValueError for what cannot be sent."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a mapping of strings, got {type(headers).__name__}")
    out = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(
                f"header {name!r}: names and values must be strings, got {type(value).__name__} {value!r:.60}"
            )
        if not HEADER_NAME.fullmatch(name):
            raise ValueError(f"{name!r} cannot travel as a NATS header name: printable ASCII without spaces or ':'")
        out[name] = value.strip()
    return out


class MemoryEngine:
    """Handles commands for compiled aggregates, keeping everything in memory."""

    def __init__(
        self,
        aggregates: Iterable[CompiledAggregate],
        clock: Clock = utcnow,
        new_id: Callable[[], str] | None = None,
        store: MemoryEventStore | None = None,
    ) -> None:
        chosen = list(aggregates.values() if isinstance(aggregates, Mapping) else aggregates)
        for compiled in chosen:
            if not isinstance(compiled, CompiledAggregate):
                raise TypeError(
                    f"MemoryEngine runs compiled aggregates (load_project(...).aggregates), "
                    f"got {type(compiled).__name__} {compiled!r:.60}"
                )
        self.aggregates: dict[str, CompiledAggregate] = {a.name: a for a in chosen}
        self.clock = clock
        self.new_id = new_id
        self.store = store or MemoryEventStore()
        self._states: dict[tuple[str, str], EntityState] = {}
        self._outcomes: dict[tuple[str, str, str], Decision] = {}  # answers by command id, kept for ever
        self._deciders: dict[str, Callable[..., Decision]] = {}
        self.state_limit: int | None = None  # bytes an entity's state may take as JSON (the runtime's KV limit)

    def aggregate(self, name: str) -> CompiledAggregate:
        require_text("aggregate", name)
        try:
            return self.aggregates[name]
        except KeyError:
            raise UnknownAggregateError(unknown_aggregate(name, self.aggregates).message) from None

    def state(self, aggregate: str, key: str) -> EntityState:
        """The entity's current state (the initial state if it has no event)."""
        compiled = self.aggregate(aggregate)
        cached = self._states.get((aggregate, key))
        if cached is None:
            cached = reading.replay(compiled, key, self.store.load(aggregate, key))
            self._states[(aggregate, key)] = cached
        return cached

    def history(self, aggregate: str, key: str) -> list[BaseCloudEvent]:
        """The entity's events, as the read path gives them to a definition."""
        self.aggregate(aggregate)
        return [reading.decode(event) for event in self.store.load(aggregate, key)]

    def handle(
        self,
        aggregate: str,
        command: str,
        key: str,
        payload: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Decision:
        """Handle one command as the runtime would, and store its events if accepted. Header
        values are stripped of surrounding whitespace, as they are on the wire."""
        require_text("aggregate", aggregate)
        require_text("command", command)
        headers = wire_headers(headers)
        compiled = self.aggregates.get(aggregate)
        if compiled is None:
            return unknown_aggregate(aggregate, self.aggregates)
        prepared = prepare(compiled.commands, compiled.unknown_command, command, key, headers, payload)
        if isinstance(prepared, Rejected):
            return prepared
        command_id = prepared.command_id
        earlier = None if command_id is None else self._outcomes.get((aggregate, prepared.key, command_id))
        current = self.state(aggregate, prepared.key)
        outcome = step(self._decider(compiled), current, prepared, earlier, self.clock())
        if outcome.decision is None:
            return outcome.earlier  # type: ignore[no-any-return]
        decision: Decision = outcome.decision
        if isinstance(decision, Accepted) and outcome.stores:
            decision = state_too_large(decision, self.state_limit) or decision
            if decision.accepted:
                self.store.append(aggregate, prepared.key, current.version, decision.events)
                self._states[(aggregate, prepared.key)] = decision.state
        if command_id is not None:
            self._outcomes[(aggregate, prepared.key, command_id)] = decision
        return decision

    def _decider(self, compiled: CompiledAggregate) -> Callable[..., Decision]:
        """compiled.decide with this engine's event ids (made once per aggregate)."""
        decide = self._deciders.get(compiled.name)
        if decide is None:
            decide = self._deciders[compiled.name] = functools.partial(compiled.decide, new_id=self.new_id)
        return decide

    def record(self, aggregate: str, key: str, events: Iterable[BaseCloudEvent]) -> EntityState:
        """Append events as given (scenario 'given' events); each must be a valid transition."""
        compiled = self.aggregate(aggregate)
        problem = check_key(key)
        if problem:
            raise ScenarioError(problem.message)
        events = list(events)
        for event in events:
            if not callable(getattr(event, "get_type", None)):  # BaseCloudEvent is a protocol
                raise TypeError(f"record takes CloudEvents (esfsm.events.new_event), got {type(event).__name__}")
        state = self.state(aggregate, key)
        new_state = reading.fold(compiled, state, events)
        self.store.append(aggregate, key, state.version, events)
        self._states[(aggregate, key)] = new_state
        return new_state
