"""The definition model: frozen dataclasses built from a schema-valid mapping.

The model holds what the YAML says, with defaults filled in and each element's
JSON pointer (``where``) kept for messages. It knows nothing of CEL programs or
state machines; that is the compiler's job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from esfsm import contract
from esfsm.findings import pointer

ANY_STATE = "*"


@dataclass(frozen=True)
class NatsNames:
    commands: str
    events: str
    stream: str
    bucket: str
    replicas: int = 1

    @classmethod
    def defaults(cls, aggregate: str, given: Mapping[str, Any]) -> NatsNames:
        return cls(
            commands=given.get("commands", contract.default_commands(aggregate)),
            events=given.get("events", contract.default_events(aggregate)),
            stream=given.get("stream", contract.default_stream(aggregate)),
            bucket=given.get("bucket", contract.default_bucket(aggregate)),
            replicas=given.get("replicas", 1),
        )


@dataclass(frozen=True)
class State:
    name: str
    description: str = ""
    final: bool = False


@dataclass(frozen=True)
class Rule:
    source: str
    message: str
    code: int
    path: str | None
    where: str


@dataclass(frozen=True)
class Emit:
    event: str
    data: Any
    condition: str | None
    where: str


@dataclass(frozen=True)
class Command:
    name: str
    description: str
    schema: Any
    in_states: tuple[str, ...] | None
    rules: tuple[Rule, ...]
    emits: tuple[Emit, ...]
    where: str


@dataclass(frozen=True)
class Upcast:
    """One step of an event's upcasting: a stored event of `version` becomes version + 1."""

    version: int
    schema: Any | None  # the data's schema at `version`, when the definition keeps it (checks only)
    data: Any  # a mapping merged into the data, or one expression giving the whole data
    drop: tuple[str, ...]
    where: str


@dataclass(frozen=True)
class Event:
    name: str
    description: str
    schema: Any
    sources: tuple[str, ...]
    dest: str | None
    apply: Any
    where: str
    version: int = 1
    formerly: tuple[str, ...] = ()  # names this type was stored under before
    upcasts: tuple[Upcast, ...] = ()
    retired: bool = False  # no command emits it; stored ones still replay

    @property
    def stored_names(self) -> tuple[str, ...]:
        """Every type name an event of this type may be stored under (subject filters match all)."""
        return (self.name, *self.formerly)


@dataclass(frozen=True)
class Aggregate:
    name: str
    description: str
    nats: NatsNames
    initial: str
    states: Mapping[str, State]
    data_schema: Any
    initial_data: Mapping[str, Any]
    authorize: tuple[Rule, ...]
    commands: Mapping[str, Command]
    events: Mapping[str, Event]
    file: str

    @property
    def service_name(self) -> str:
        return contract.service_name(self.name)

    def source_states(self, event: Event) -> tuple[str, ...]:
        """The states an event may occur in, with '*' expanded to every non-final state."""
        if ANY_STATE in event.sources:
            return tuple(s for s in self.states if not self.states[s].final)
        return event.sources


def fingerprint(aggregate: Aggregate) -> str:
    """A short hash of what the definition means (not where it was read from, nor how its
    mappings were ordered): two runtimes serving one aggregate should show the same one."""

    return _digest(_canonical(aggregate))


def state_fingerprint(aggregate: Aggregate) -> str:
    """A short hash of only what computes an entity's state from its stored events: the initial
    state and data, the states, and each event's name, version, stored names, from, to, apply and
    upcasters. Descriptions, messages, schemas and commands are left out, so editing them keeps
    every snapshot; a snapshot written under another state fingerprint is never trusted."""
    events = {
        e.name: {
            "version": e.version,
            "formerly": sorted(e.formerly),
            "from": sorted(aggregate.source_states(e)),
            "to": e.dest,
            "apply": _canonical(e.apply),
            "upcast": [{"version": u.version, "data": _canonical(u.data), "drop": sorted(u.drop)} for u in e.upcasts],
        }
        for e in aggregate.events.values()
    }
    states = {name: s.final for name, s in aggregate.states.items()}
    return _digest(
        {
            "initial": aggregate.initial,
            "initial_data": _canonical(aggregate.initial_data),
            "states": states,
            "events": events,
        }
    )


def _canonical(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "file"}
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _states(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _rules(raw: list[dict[str, Any]], where: str, default_code: int) -> tuple[Rule, ...]:
    return tuple(
        Rule(r["rule"], r["message"], r.get("code", default_code), r.get("path"), f"{where}/{i}")
        for i, r in enumerate(raw)
    )


def build(raw: Mapping[str, Any], file: str) -> Aggregate:
    """Build the model from a mapping that already passed the DSL schema."""
    name = raw["aggregate"]
    states = {
        s: State(s, (spec or {}).get("description", ""), bool((spec or {}).get("final", False)))
        for s, spec in raw["states"].items()
    }
    commands = {}
    for cname, spec in raw["commands"].items():
        where = pointer("commands", cname)
        commands[cname] = Command(
            name=cname,
            description=spec.get("description", ""),
            schema=spec.get("schema", {"type": "object"}),
            in_states=_states(spec["in"]) if "in" in spec else None,
            rules=_rules(spec.get("rules", []), f"{where}/rules", 422),
            emits=tuple(
                Emit(e["event"], e.get("data", {}), e.get("if"), f"{where}/emit/{i}")
                for i, e in enumerate(spec["emit"])
            ),
            where=where,
        )
    events = {}
    for ename, declared in raw["events"].items():
        spec = declared or {}  # `shipped:` with nothing after it declares an event with no body (null)
        where = pointer("events", ename)
        events[ename] = Event(
            name=ename,
            description=spec.get("description", ""),
            schema=spec.get("schema", {"type": "object"}),
            sources=_states(spec.get("from", ANY_STATE)),
            dest=spec.get("to"),
            apply=spec.get("apply", {}),
            where=pointer("events", ename),
            version=spec.get("version", 1),
            formerly=tuple(spec.get("formerly", ())),
            upcasts=tuple(
                Upcast(
                    u["version"], u.get("schema"), u.get("data", {}), tuple(u.get("drop", ())), f"{where}/upcast/{i}"
                )
                for i, u in enumerate(spec.get("upcast", ()))
            ),
            retired=bool(spec.get("retired", False)),
        )
    return Aggregate(
        name=name,
        description=raw.get("description", ""),
        nats=NatsNames.defaults(name, raw.get("nats", {})),
        initial=raw["initial"],
        states=MappingProxyType(states),
        data_schema=raw.get("data", {"type": "object"}),
        initial_data=MappingProxyType(dict(raw.get("initial_data", {}))),
        authorize=_rules(raw.get("authorize", []), "/authorize", 403),
        commands=MappingProxyType(commands),
        events=MappingProxyType(events),
        file=file,
    )
