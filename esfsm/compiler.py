"""Compile an aggregate model into a :class:`CompiledAggregate`.

The compiled aggregate holds a ``transitions`` Machine (one trigger per event
type, ``from`` → ``to``), the CEL programs and the JSON-Schema validators, and
offers the two pure functions everything else is built on:

* ``decide(state, command) → Accepted | Rejected`` — checks and emits events;
* ``evolve(state, event) → state`` — applies one event, through the Machine.

Neither does I/O, so the in-memory engine and the NATS runtime run the very
same object.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cloudevents.core.base import BaseCloudEvent
from transitions import Machine, MachineError

from esfsm.contract import EVENT_VERSION_EXTENSION
from esfsm.errors import EvaluationError, ReplayError, UnreadableEvent
from esfsm.events import new_event, with_type_and_data
from esfsm.expressions import Expression, Template, field_references
from esfsm.findings import did_you_mean, one_of, pointer
from esfsm.model import Aggregate, Command, Event, Rule, state_fingerprint
from esfsm.paths import EmitPaths
from esfsm.validation import SchemaCheck
from esfsm.values import (
    BAD_REQUEST,
    COMMAND_ID_HEADER,
    CONFLICT,
    INTERNAL,
    NOT_FOUND,
    UNPROCESSABLE,
    Accepted,
    CommandRequest,
    Decision,
    EntityState,
    ErrorDetail,
    Rejected,
)


class _Cursor:
    """The object the Machine moves: one per evolve call, so evolve stays pure."""

    __slots__ = ("state",)

    def __init__(self, state: str) -> None:
        self.state = state


@dataclass(frozen=True, eq=False)
class CompiledRule:
    expression: Expression
    message: str
    code: int
    path: str

    @classmethod
    def of(cls, rule: Rule) -> CompiledRule:
        path = rule.path
        if path is None:
            fields = [f for var, f in field_references(rule.source) if var == "cmd"]
            path = pointer(fields[0]) if fields else ""
        return cls(Expression(rule.source, f"{rule.where}/rule"), rule.message, rule.code, path)

    def rejection(self) -> Rejected:
        return Rejected(self.code, self.message, (ErrorDetail(self.path, self.message),))


@dataclass(frozen=True, eq=False)
class CompiledEmit:
    event: str
    data: Template
    condition: Expression | None


@dataclass(frozen=True, eq=False)
class CompiledCommand:
    model: Command
    validator: SchemaCheck
    rules: tuple[CompiledRule, ...]
    emits: tuple[CompiledEmit, ...]
    accepted_states: frozenset[str]


@dataclass(frozen=True, eq=False)
class CompiledUpcast:
    """One step: the data of a stored event of `version` as the data of version + 1."""

    version: int
    data: Template
    replace: bool  # data is one expression giving the whole data (a mapping is merged)
    drop: tuple[str, ...]
    where: str

    def run(self, data: Any, variables: dict[str, Any]) -> Any:
        result = self.data.evaluate(variables)
        if not isinstance(result, Mapping):
            raise EvaluationError(self.where, "data", f"gave {result!r}, not a mapping")
        merged = dict(result) if self.replace else {**(data if isinstance(data, Mapping) else {}), **result}
        for name in self.drop:
            merged.pop(name, None)
        return merged


@dataclass(frozen=True, eq=False)
class CompiledEvent:
    name: str
    validator: SchemaCheck
    apply: Template
    merge: bool  # apply is one expression giving a map to merge
    version: int
    upcasts: Mapping[int, CompiledUpcast]


class CompiledAggregate:
    """An aggregate ready to run: Machine, CEL programs, validators; decide and evolve."""

    def __init__(self, model: Aggregate) -> None:
        self.model = model
        self.name = model.name
        self.machine = Machine(
            model=None,
            states=list(model.states),
            initial=model.initial,
            transitions=[
                {"trigger": e.name, "source": list(model.source_states(e)), "dest": e.dest}
                for e in model.events.values()
            ],
            auto_transitions=False,
            send_event=False,
        )
        self._next = self._transition_table()
        self.authorize = tuple(CompiledRule.of(r) for r in model.authorize)
        self.data_validator = SchemaCheck(model.data_schema)
        self.events = {e.name: _compile_event(e) for e in model.events.values()}
        # every name an event may be stored under → the event it is read as (renames included)
        self.readers = {name: self.events[e.name] for e in model.events.values() for name in e.stored_names}
        self.state_fingerprint = state_fingerprint(model)
        self.commands = {c.name: self._compile_command(c) for c in model.commands.values()}

    def _compile_command(self, command: Command) -> CompiledCommand:
        emits = tuple(
            CompiledEmit(
                e.event,
                Template(e.data, f"{e.where}/data"),
                Expression(e.condition, f"{e.where}/if") if e.condition else None,
            )
            for e in command.emits
        )
        return CompiledCommand(
            command,
            SchemaCheck(command.schema),
            tuple(CompiledRule.of(r) for r in command.rules),
            emits,
            frozenset(self.accepting_states(command)),
        )

    # -- the machine ---------------------------------------------------------

    def next_state(self, state: str, event_type: str) -> str | None:
        """Where event_type leads from state, or None if it is not a valid trigger there
        (read from the Machine's transitions once, then looked up)."""
        return self._next.get((state, event_type))

    def _transition_table(self) -> dict[tuple[str, str], str]:
        table = {}
        for event_type, event in self.machine.events.items():
            for source, transitions in event.transitions.items():
                if transitions:
                    table[(source, event_type)] = transitions[0].dest or source
        return table

    def accepting_states(self, command: Command) -> list[str]:
        """States from which some choice of the command's conditional emits is a valid path
        that emits at least one event (a command that could only ever do nothing in a
        state, e.g. a final one, is not accepted there)."""
        return [
            start
            for start in self.model.states
            if (command.in_states is None or start in command.in_states)
            and EmitPaths(self.next_state, start, command.emits).emits_an_event()
        ]

    # -- pure functions ------------------------------------------------------

    def initial_state(self, key: str) -> EntityState:
        return EntityState(key, self.model.initial, dict(self.model.initial_data), 0)

    def upcast(self, state: EntityState, event: BaseCloudEvent) -> BaseCloudEvent:
        """A stored event as this definition reads it: its current type and version, through the
        event's upcasters (the event itself when it is current). UnreadableEvent when the type is
        unknown under every name or its version is newer than this definition knows."""
        stored_type = event.get_type()
        compiled = self.readers.get(stored_type)
        stored_version = event.get_extension(EVENT_VERSION_EXTENSION)
        version = 1 if stored_version is None else stored_version
        if compiled is not None and version == compiled.version and stored_type == compiled.name:
            return event
        if compiled is None:
            raise UnreadableEvent(state.key, stored_type, version, state.state, "unknown event type")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise UnreadableEvent(state.key, stored_type, 0, state.state, f"invalid event version {version!r}")
        if version > compiled.version:
            raise UnreadableEvent(
                state.key,
                stored_type,
                version,
                state.state,
                f"its version {version} is newer than this definition knows ({compiled.name!r} is at version "
                f"{compiled.version})",
            )
        data = event.get_data()
        data = {} if data is None else data
        for step in range(version, compiled.version):
            variables = {"event": data, "type": stored_type, "key": state.key}
            try:
                data = compiled.upcasts[step].run(data, variables)
            except EvaluationError as err:
                raise ReplayError(state.key, stored_type, state.state, f"upcasting version {step}: {err}") from err
        return with_type_and_data(event, compiled.name, compiled.version, data)

    def evolve(self, state: EntityState, event: BaseCloudEvent) -> EntityState:
        """Apply one event: the Machine moves the state, `apply` computes the data."""
        event_type = event.get_type()
        compiled = self.events.get(event_type)
        if compiled is None:
            raise ReplayError(state.key, event_type, state.state, "unknown event type")
        cursor = _Cursor(state.state)
        try:
            self.machine.events[event_type].trigger(cursor)
        except MachineError as err:
            raise ReplayError(state.key, event_type, state.state, "not a valid transition") from err
        payload = event.get_data()
        variables = {
            "event": payload if payload is not None else {},
            "data": state.data,
            "state": state.state,
            "key": state.key,
            "version": state.version,
        }
        try:
            changes = compiled.apply.evaluate(variables)
        except EvaluationError as err:
            raise ReplayError(state.key, event_type, state.state, str(err)) from err
        if not isinstance(changes, Mapping):
            raise ReplayError(state.key, event_type, state.state, f"apply gave {changes!r}, not a mapping")
        data = {**state.data, **changes} if changes else state.data
        return EntityState(state.key, cursor.state, data, state.version + 1)

    def replay(self, key: str, events: Iterable[BaseCloudEvent]) -> EntityState:
        """The state after events, from the initial state: the read path's replay (reading.py)."""
        from esfsm import reading

        return reading.replay(self, key, events)

    def decide(
        self,
        state: EntityState,
        request: CommandRequest,
        now: dt.datetime | None = None,
        new_id: Callable[[], str] | None = None,
    ) -> Decision:
        """Check a command against the entity's state and emit its events, or reject it."""
        command = self.commands.get(request.name)
        if command is None:
            return self.unknown_command(request.name)
        now = now or dt.datetime.now(dt.UTC)
        variables = {
            "cmd": request.payload,
            "data": state.data,
            "state": state.state,
            "key": state.key,
            "version": state.version,
            "meta": request.headers,
            "now": now,
        }
        try:
            for rule in self.authorize:
                if not rule.expression.test(variables):
                    return rule.rejection()
            if not command.validator.is_valid(request.payload):
                errors = command.validator.errors(request.payload)
                return Rejected(BAD_REQUEST, f"invalid {request.name} payload: {errors[0].message}", errors)
            if state.state not in command.accepted_states:
                return self._not_accepted(request.name, state.state)
            for rule in command.rules:
                if not rule.expression.test(variables):
                    return rule.rejection()
            return self._emit(command, state, variables, now, new_id)
        except EvaluationError as err:
            return _overflow(err) or Rejected(
                INTERNAL, f"the definition failed to evaluate {err.where}: {err.reason}", (ErrorDetail("", str(err)),)
            )

    def unknown_command(self, name: str) -> Rejected:
        return Rejected(
            NOT_FOUND,
            f"unknown command {name!r} for aggregate {self.name!r}{did_you_mean(name, self.commands)}",
            (ErrorDetail("", f"expected one of {one_of(self.commands)}"),),
        )

    def _not_accepted(self, command: str, state: str) -> Rejected:
        message = f"command {command!r} is not accepted in state {state!r}"
        return Rejected(CONFLICT, message, (ErrorDetail("", message),))

    def _emit(
        self,
        command: CompiledCommand,
        state: EntityState,
        variables: dict[str, Any],
        now: dt.datetime,
        new_id: Callable[[], str] | None,
    ) -> Decision:
        events = []
        current = state
        for emit in command.emits:
            if emit.condition is not None and not emit.condition.test(variables):
                continue
            if self.next_state(current.state, emit.event) is None:
                return self._not_accepted(command.model.name, current.state)
            data = emit.data.evaluate(variables)
            compiled = self.events[emit.event]
            if not compiled.validator.is_valid(data):
                errors = compiled.validator.errors(data)
                return Rejected(INTERNAL, f"event {emit.event!r} would carry invalid data: {errors[0].message}", errors)
            event = new_event(
                self.name,
                emit.event,
                state.key,
                current.version + 1,
                data,
                now,
                new_id() if new_id else None,
                variables["meta"].get(COMMAND_ID_HEADER),
                compiled.version,
            )
            try:
                current = self.evolve(current, event)
            except ReplayError as err:
                cause = err.__cause__
                overflow = _overflow(cause) if isinstance(cause, EvaluationError) else None
                return overflow or Rejected(INTERNAL, str(err), (ErrorDetail("", str(err)),))
            events.append(event)
        if events and not self.data_validator.is_valid(current.data):
            errors = self.data_validator.errors(current.data)
            return Rejected(UNPROCESSABLE, f"the command would make the data invalid: {errors[0].message}", errors)
        return Accepted(tuple(events), current)


def _overflow(err: EvaluationError) -> Rejected | None:
    """A 422 naming the expression and the field when err is a 64-bit integer overflow: the
    command's values are too large for what the definition computes with them."""
    if "overflow" not in err.reason.lower():
        return None
    message = (
        f"the command's values are too large: {err.where} ({err.source!r}) would overflow "
        f"a 64-bit integer: {err.reason}"
    )
    return Rejected(UNPROCESSABLE, message, (ErrorDetail(err.where, message),))


def _compile_event(event: Event) -> CompiledEvent:
    upcasts = {
        u.version: CompiledUpcast(
            u.version, Template(u.data, f"{u.where}/data"), isinstance(u.data, str), u.drop, f"{u.where}/data"
        )
        for u in event.upcasts
    }
    return CompiledEvent(
        event.name,
        SchemaCheck(event.schema),
        Template(event.apply, f"{event.where}/apply"),
        isinstance(event.apply, str),
        event.version,
        MappingProxyType(upcasts),
    )


def compile_aggregate(model: Aggregate) -> CompiledAggregate:
    return CompiledAggregate(model)
