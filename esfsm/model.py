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
class Event:
    name: str
    description: str
    schema: Any
    sources: tuple[str, ...]
    dest: str | None
    apply: Any
    where: str


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

    def canonical(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "file"}
        if isinstance(value, Mapping):
            return {str(k): canonical(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [canonical(v) for v in value]
        return value

    text = json.dumps(canonical(aggregate), sort_keys=True, default=str, separators=(",", ":"))
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
        events[ename] = Event(
            name=ename,
            description=spec.get("description", ""),
            schema=spec.get("schema", {"type": "object"}),
            sources=_states(spec.get("from", ANY_STATE)),
            dest=spec.get("to"),
            apply=spec.get("apply", {}),
            where=pointer("events", ename),
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
