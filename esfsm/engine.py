"""The in-memory engine: entities and their event logs in memory.

It runs the same compiled aggregates as the NATS runtime, with the same
request semantics: entity-key validation, ``x-esfsm-expected-version``
(optimistic concurrency) and ``x-esfsm-command-id`` (idempotency). Scenario
tests, ``esfsm test`` and most of the test suite run on it.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cloudevents.core.base import BaseCloudEvent

from esfsm.compiler import CompiledAggregate
from esfsm.errors import ScenarioError, UnknownAggregateError
from esfsm.findings import did_you_mean, one_of
from esfsm.values import (
    BAD_REQUEST,
    COMMAND_ID_HEADER,
    CONFLICT,
    EXPECTED_VERSION_HEADER,
    HEADER_NAME,
    NOT_FOUND,
    CommandRequest,
    Decision,
    EntityState,
    ErrorDetail,
    Rejected,
    valid_key,
)

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def check_key(key: object) -> Rejected | None:
    """400 unless key is one subject token and a valid KV key."""
    if valid_key(key):
        return None
    message = f"invalid entity key {clip(repr(key), 60)}: expected 1 to 128 characters from A-Z a-z 0-9 _ = -"
    if key is None or key == "":
        message = "missing entity key: set the x-ergonats-entity-key header"
    return Rejected(BAD_REQUEST, message, (ErrorDetail("", message),))


def check_command_id(headers: Mapping[str, str]) -> Rejected | None:
    """400 when x-esfsm-command-id is present but empty, too long or not printable ASCII."""
    raw = headers.get(COMMAND_ID_HEADER)
    if raw is None or (0 < len(raw) <= 256 and raw.isascii() and raw.isprintable()):
        return None
    message = f"invalid {COMMAND_ID_HEADER} {raw[:40]!r}: expected 1 to 256 printable ASCII characters"
    return Rejected(BAD_REQUEST, message, (ErrorDetail("", message),))


def expected_version(headers: Mapping[str, str]) -> int | Rejected | None:
    """The x-esfsm-expected-version header as an int, None when absent, or a 400."""
    raw = headers.get(EXPECTED_VERSION_HEADER)
    if raw is None:
        return None
    text = str(raw).strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:  # '²'.isdigit() is True
        message = f"invalid {EXPECTED_VERSION_HEADER} {clip(repr(raw))}: expected a non-negative integer"
        return Rejected(BAD_REQUEST, message, (ErrorDetail("", message),))
    return int(text)


MAX_DEPTH = 64  # nesting of a payload: deeper ones would exhaust the validators' recursion
INT64 = (-(2**63), 2**63 - 1)  # CEL integers are 64-bit


def clip(text: str, limit: int = 200) -> str:
    """text, cut to limit characters: messages quote input, and input can be huge."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def check_payload(payload: Any) -> Rejected | None:
    """400 for what JSON allows but a definition cannot evaluate: nesting deeper than
    MAX_DEPTH, integers outside 64 bits, non-finite numbers; and for what is no JSON at
    all (a set, bytes, a datetime, a non-string key), which only an in-process caller
    can hand the in-memory engine."""
    if _fine(payload, 0):  # the usual case, without building a path for every value
        return None
    stack = [(payload, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        problem = None
        if depth > MAX_DEPTH:
            problem = f"the payload is nested more than {MAX_DEPTH} levels deep"
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
            problem = f"{clip(str(value), 40)} is outside the 64-bit integer range"
        elif isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
            problem = f"{value} is not a finite number"
        elif isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                problem = f"a key {next(k for k in value if not isinstance(k, str))!r} is not a string, as JSON needs"
            stack.extend((v, f"{path}/{k}", depth + 1) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, f"{path}/{i}", depth + 1) for i, v in enumerate(value))
        elif not (value is None or isinstance(value, (str, int, float))):
            problem = f"a {type(value).__name__} value is not JSON"
        if problem:
            return Rejected(BAD_REQUEST, problem, (ErrorDetail(path[:200], problem),))
    return None


def _fine(value: Any, depth: int) -> bool:
    """Whether check_payload has nothing to say about value (at depth)."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return INT64[0] <= value <= INT64[1]
    if depth >= MAX_DEPTH:
        return False
    if kind is dict:
        return all(type(k) is str for k in value) and all(_fine(v, depth + 1) for v in value.values())
    if kind is list:
        return all(_fine(v, depth + 1) for v in value)
    if kind is float:
        return math.isfinite(value)
    return False  # anything else: let the full walk decide


def check_request(compiled: CompiledAggregate, command: str, key: object,
                  headers: Mapping[str, str]) -> Rejected | None:
    """What both engines check before looking at the entity, in this order: the key (400),
    the command id (400), the expected version's form (400), the command's name (404)."""
    problem = check_key(key) or check_command_id(headers)
    if problem:
        return problem
    expected = expected_version(headers)
    if isinstance(expected, Rejected):
        return expected
    if command not in compiled.commands:
        return compiled.unknown_command(command)
    return None


def version_conflict(expected: int, actual: int) -> Rejected:
    message = f"expected version {expected}, but the entity is at version {actual}"
    return Rejected(CONFLICT, message, (ErrorDetail("", message),))


def unknown_aggregate(name: str, known: Iterable[str]) -> Rejected:
    known = list(known)
    message = f"unknown aggregate {name!r}{did_you_mean(name, known) or f'; expected one of {one_of(known)}'}"
    return Rejected(NOT_FOUND, message, (ErrorDetail("", message),))


class EventStore(Protocol):
    """Where an entity's events live. The NATS runtime implements it on JetStream."""

    def load(self, aggregate: str, key: str) -> list[BaseCloudEvent]: ...

    def append(self, aggregate: str, key: str, expected_version: int, events: Iterable[BaseCloudEvent]) -> None: ...


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

    def append(self, aggregate: str, key: str, expected_version: int, events: Iterable[BaseCloudEvent]) -> None:
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
            raise TypeError(f"header {name!r}: names and values must be strings, got {type(value).__name__} "
                            f"{value!r:.60}")
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
                raise TypeError(f"MemoryEngine runs compiled aggregates (load_project(...).aggregates), "
                                f"got {type(compiled).__name__} {compiled!r:.60}")
        self.aggregates = {a.name: a for a in chosen}
        self.clock = clock
        self.new_id = new_id
        self.store = store or MemoryEventStore()
        self._states: dict[tuple[str, str], EntityState] = {}
        self._outcomes: dict[tuple[str, str, str], Decision] = {}

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
            cached = compiled.replay(key, self.store.load(aggregate, key))
            self._states[(aggregate, key)] = cached
        return cached

    def history(self, aggregate: str, key: str) -> list[BaseCloudEvent]:
        self.aggregate(aggregate)
        return self.store.load(aggregate, key)

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
        problem = check_request(compiled, command, key, headers)
        if problem:
            return problem
        command_id = headers.get(COMMAND_ID_HEADER)
        if command_id is not None and (aggregate, key, command_id) in self._outcomes:
            return self._outcomes[(aggregate, key, command_id)]
        expected = expected_version(headers)
        assert not isinstance(expected, Rejected)  # check_request looked at it
        current = self.state(aggregate, key)
        if expected is not None and expected != current.version:
            decision: Decision = version_conflict(expected, current.version)
        else:
            payload = {} if payload is None else payload
            request = CommandRequest(command, key, payload, headers)
            bad_payload = check_payload(payload)
            decision = bad_payload or compiled.decide(current, request, self.clock(), self.new_id)
            if decision.accepted and decision.events:
                self.store.append(aggregate, key, current.version, decision.events)
                self._states[(aggregate, key)] = decision.state
        if command_id is not None:
            self._outcomes[(aggregate, key, command_id)] = decision
        return decision

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
        new_state = state
        for event in events:
            new_state = compiled.evolve(new_state, event)
        self.store.append(aggregate, key, state.version, events)
        self._states[(aggregate, key)] = new_state
        return new_state
