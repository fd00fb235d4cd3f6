"""The breaking-change check: what `esfsm validate --against REF` says about a change of definitions.

Events stay; definitions change. A change is breaking when replaying a history
that was valid under the older definition fails under the new one, or gives a
state other than the change declares. Each rule here asks that of one part of
the definition, without NATS and without running anything:

- every event type and version the older definition may have stored is read
  by the new one (its name, a `formerly`, a version not lowered);
- the fields a changed `apply` or an upcast step reads are present in the
  events stored (the older schema requires them, or an upcast step sets them);
- the product of the two state machines, from both initial states: every event
  valid under the older definition is valid where the new one has the entity;
- stream, bucket and subject prefixes stay; a removed aggregate leaves its data.

A change that cannot alter replay (a removed command, a changed `apply`,
initial data or state, a stricter schema nothing reads) is a warning.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from esfsm import model as m
from esfsm.checks.json_schemas import declared_fields
from esfsm.compiler import CompiledAggregate
from esfsm.expressions import field_references, syntax_error, template_expressions
from esfsm.findings import Finding, did_you_mean, one_of, pointer
from esfsm.loader import Document
from esfsm.stored import StreamContents, unread


@dataclass(frozen=True)
class Definition:
    """One aggregate's definition: the document (for positions) and the compiled aggregate."""

    doc: Document
    compiled: CompiledAggregate

    @property
    def model(self) -> m.Aggregate:
        return self.compiled.model

    def error(self, ptr: str, message: str, rule: str) -> Finding:
        return self.doc.finding(ptr, message, rule)

    def warning(self, ptr: str, message: str, rule: str) -> Finding:
        return self.doc.finding(ptr, message, rule, "warning")

    def written(self, ptr: str, fallback: str) -> str:
        """ptr when the definition writes it, else fallback (a default is not written anywhere)."""
        return ptr if ptr in self.doc.positions else fallback


def compare(older: Iterable[Definition], newer: Iterable[Definition], unchecked: Iterable[str] = ()) -> list[Finding]:
    """Every finding about replaying, under newer, what older may have stored (matched by aggregate name;
    an aggregate named in unchecked is defined but has errors, so it is neither compared nor removed)."""
    new_by_name = {d.model.name: d for d in newer}
    skipped = set(unchecked)
    findings: list[Finding] = []
    for old in older:
        if old.model.name in skipped:
            continue
        new = new_by_name.get(old.model.name)
        if new is None:
            nats = old.model.nats
            findings.append(
                old.error(
                    "/aggregate",
                    f"aggregate {old.model.name!r} is no longer defined: its events (stream {nats.stream!r}) and "
                    f"snapshots (bucket {nats.bucket!r}) stay behind and nothing serves its commands; keep its "
                    "definition, or delete the stream and bucket on purpose",
                    "aggregate-removed",
                )
            )
            continue
        findings.extend(compare_aggregate(old, new))
    return sorted(set(findings))


def compare_aggregate(old: Definition, new: Definition) -> Iterator[Finding]:
    yield from nats_names(old, new)
    yield from stored_types(old, new)
    yield from read_fields(old, new)
    yield from schema_changes(old, new)
    yield from state_changes(old, new)
    yield from Product(old, new).findings()
    yield from removed_commands(old, new)


def against_stream(new: Definition, contents: StreamContents) -> Iterator[Finding]:
    """What a live stream holds that new cannot replay (`--against nats://…`)."""
    for problem in unread(new.compiled, contents):
        reader = new.compiled.readers.get(problem.event_type)
        if reader is not None:
            event = new.model.events[reader.name]
            yield new.error(
                f"{event.where}/version" if f"{event.where}/version" in new.doc.positions else event.where,
                f"the stream holds {problem}: raise 'version' of event {reader.name!r} to at least "
                f"{max(problem.versions)} with its upcast steps, or run the newer definition",
                "stored-unreadable",
            )
        else:
            yield new.error(
                "/aggregate",
                f"the stream holds {problem}; replaying an entity holding one fails: define it again (with "
                "`retired: true` if no command emits it any more), or list it under `formerly` of the event it became",
                "stored-unreadable",
            )
    states = sorted((contents.states or frozenset()) - set(new.model.states))
    if states:
        yield new.error(
            "/states",
            f"entities in the stream are in {_states(states)}, which this definition does not have: map them out "
            "with a retired event whose `to` names a current state, or keep the state",
            "state-removed",
        )


def _states(names: list[str]) -> str:
    return ("state " if len(names) == 1 else "states ") + one_of(names)


# -- NATS names -------------------------------------------------------------------

_NATS = {
    "stream": (
        "stream",
        "the events stored in {old!r} stay behind and every entity starts again from nothing",
    ),
    "bucket": ("bucket", "the snapshots stored in {old!r} stay behind"),
    "events": (
        "events subject prefix",
        "the events already stored under {old!r} are outside the new subjects, so no entity replays them",
    ),
    "commands": ("commands subject prefix", "clients that still send commands to {old!r} get no answer"),
}


def nats_names(old: Definition, new: Definition) -> Iterator[Finding]:
    for field, (what, consequence) in _NATS.items():
        before, after = getattr(old.model.nats, field), getattr(new.model.nats, field)
        if before != after:
            yield new.error(
                new.written(f"/nats/{field}", "/aggregate"),
                f"the {what} changed from {before!r} to {after!r}: {consequence.format(old=before)}; keep "
                f"{before!r} (set 'nats.{field}'), or move the data yourself before deploying",
                "nats-renamed",
            )


# -- stored event types and versions ----------------------------------------------


def stored_types(old: Definition, new: Definition) -> Iterator[Finding]:
    """Every name and version the older definition reads may be stored: the new one must read it."""
    added = [name for name in new.model.events if name not in old.model.events]
    for event in old.model.events.values():
        lost = [name for name in event.stored_names if name not in new.compiled.readers]
        if lost:
            hint = _renamed(event, [new.model.events[n] for n in added])
            names = "it" if lost == [event.name] else "events stored as " + " or ".join(repr(n) for n in lost)
            yield old.error(
                event.where,
                f"event {event.name!r} may be stored, but nothing in the new definition reads {names}, so "
                "replaying an entity holding one fails; keep the event (with `retired: true` if no command emits "
                f"it any more), or list {lost[0]!r} under `formerly` of the event it became{hint}",
                "event-removed",
            )
        for name in event.stored_names:
            reader = new.compiled.readers.get(name)
            if reader is None or reader.version >= event.version:
                continue
            target = new.model.events[reader.name]
            yield new.error(
                new.written(f"{target.where}/version", target.where),
                f"event {reader.name!r} is at version {reader.version}, but the older definition stores {name!r} "
                f"at version {event.version}: stored events of a newer version cannot be read; a version is "
                f"never lowered (set it to {event.version} or more)",
                "version-lowered",
            )


def _renamed(event: m.Event, added: list[m.Event]) -> str:
    """'; was it renamed to 'x'?' when an added event looks like event (same schema, from, to and apply,
    or a close name)."""
    same = [
        e.name
        for e in added
        if (e.schema, e.sources, e.dest, e.apply) == (event.schema, event.sources, event.dest, event.apply)
    ]
    hint = f"; did you mean {same[0]!r}?" if same else did_you_mean(event.name, [e.name for e in added])
    return hint.replace("did you mean", "was it renamed to")


# -- fields the new definition reads of stored events -----------------------------


def _reads(template: Any, where: str) -> Iterator[tuple[str, str]]:
    """(pointer, field) for each `event.field` a template reads."""
    for ptr, source in template_expressions(template, where):
        if source.strip() and not syntax_error(source):
            for var, field in field_references(source):
                if var == "event":
                    yield ptr, field


def _required(schema: Any) -> set[str]:
    required = schema.get("required") if isinstance(schema, Mapping) else None
    return {f for f in required if isinstance(f, str)} if isinstance(required, list) else set()


def read_fields(old: Definition, new: Definition) -> Iterator[Finding]:
    """A field the new definition reads (a changed upcast step or apply) of events stored at some version
    the older definition reads: error when those events may lack it (that version's schema does not
    require it, no upcast step before sets it, and the older definition did not read it already)."""
    for event in old.model.events.values():
        reader = new.compiled.readers.get(event.name)
        if reader is None or reader.version < event.version:
            continue  # reported by stored_types
        target = new.model.events[reader.name]
        old_steps = {u.version: u for u in event.upcasts}
        new_steps = {u.version: u for u in target.upcasts}
        for version in range(event.version, 0, -1):
            if reader.version == event.version and _chain(old_steps, version, event) == _chain(
                new_steps, version, target
            ):
                continue  # the same data through the same steps and apply: replay cannot change
            if version == event.version:
                present = _required(event.schema) | {f for _, f in _reads(event.apply, "")}
            else:
                known = old_steps.get(version) or new_steps.get(version)
                if known is None or known.schema is None:
                    continue  # what events of that version hold is not known
                present = _required(known.schema) | {f for _, f in _reads(known.data, "")}
            yield from _read_fields(new, event, target, version, present)


def _chain(steps: Mapping[int, m.Upcast], version: int, event: m.Event) -> list[Any]:
    """What reads an event stored at version: the steps from it on, then the apply."""
    chain: list[Any] = [(u.data, u.drop) for v, u in sorted(steps.items()) if v >= version]
    return [*chain, event.apply]


def _read_fields(new: Definition, event: m.Event, target: m.Event, stored: int, present: set[str]) -> Iterator[Finding]:
    """read_fields for events of one older type stored at version `stored`, read as target."""
    steps = {u.version: u for u in target.upcasts}
    for version in range(stored, target.version):
        step = steps.get(version)
        if step is None:
            return  # reported by the checker
        fix = f"read only fields that events {event.name!r} of version {version} have"
        yield from _missing(new, event, stored, present, step.data, f"{step.where}/data", "this upcast step", fix)
        if isinstance(step.data, str):
            return  # the data is whatever the expression gives
        present = (present | set(step.data)) - set(step.drop)
    fix = "raise the event's 'version' and add an upcast step that sets it"
    yield from _missing(new, event, stored, present, target.apply, f"{target.where}/apply", "this apply", fix)


def _missing(
    new: Definition, event: m.Event, stored: int, present: set[str], template: Any, where: str, what: str, fix: str
) -> Iterator[Finding]:
    for ptr, field in _reads(template, where):
        if field not in present:
            yield new.error(
                ptr,
                f"event.{field}: events {event.name!r} stored by the older definition (version {stored}) "
                f"may lack field {field!r}, which {what} reads, so replaying them fails; {fix}",
                "stored-field-missing",
            )


# -- schema, apply and initial changes ----------------------------------------------


def _types(schema: Any) -> set[str] | None:
    kind = schema.get("type") if isinstance(schema, Mapping) else None
    if kind is None:
        return None
    return {str(k) for k in kind} if isinstance(kind, list) else {str(kind)}


def _widened(kinds: set[str]) -> set[str]:
    """The JSON types a value of kinds may be read as (an integer is a number)."""
    return kinds | {"integer"} if "number" in kinds else kinds


def _property(schema: Any, field: str) -> Any:
    props = schema.get("properties") if isinstance(schema, Mapping) else None
    return props.get(field) if isinstance(props, Mapping) else None


def schema_changes(old: Definition, new: Definition) -> Iterator[Finding]:
    """An event schema changed at the same version: stored events may not fit it (a warning unless a
    changed apply reads a field stored with another type, which read_fields does not see)."""
    for event in old.model.events.values():
        reader = new.compiled.readers.get(event.name)
        if reader is None or reader.version != event.version:
            continue
        target = new.model.events[reader.name]
        where = new.written(f"{target.where}/schema", target.where)
        same_apply = target.apply == event.apply
        read = {f: ptr for ptr, f in _reads(target.apply, f"{target.where}/apply")}
        for field in sorted(_required(target.schema) - _required(event.schema)):
            if field not in read or same_apply:
                yield new.warning(
                    where,
                    f"event {target.name!r} now requires field {field!r}, which events stored by the older "
                    "definition may lack; replay does not depend on it, but stored events no longer fit the "
                    f"schema: raise 'version' and add an upcast step that sets {field!r}",
                    "schema-changed",
                )
        for field in sorted(declared_fields(target.schema) or ()):
            before, after = _types(_property(event.schema, field)), _types(_property(target.schema, field))
            if before is None or after is None or before <= _widened(after):
                continue
            message = (
                f"field {field!r} of event {target.name!r} changed type from {one_of(before)} to {one_of(after)} "
                f"without a new version: stored events still hold the older type"
            )
            if field in read and not same_apply:
                yield new.error(
                    read[field],
                    f"{message}, and this changed apply reads it, so replaying them fails or differs; raise "
                    f"'version' and add an upcast step that converts {field!r}",
                    "schema-incompatible",
                )
            else:
                yield new.warning(where, f"{message}; replay does not depend on it", "schema-changed")


def state_changes(old: Definition, new: Definition) -> Iterator[Finding]:
    """What computes state changed without breaking replay: every snapshot is refreshed (warnings)."""
    refresh = "every snapshot is refreshed from the events (the state fingerprint differs)"
    for event in new.model.events.values():
        before = next((old.model.events[n] for n in event.stored_names if n in old.model.events), None)
        if before is not None and before.apply != event.apply:
            yield new.warning(
                new.written(f"{event.where}/apply", event.where),
                f"the apply of event {event.name!r} changed: {refresh}, so entities' data becomes what the new "
                "apply computes from their events",
                "apply-changed",
            )
        before_steps = {u.version: (u.data, u.drop) for u in (before.upcasts if before is not None else ())}
        for step in event.upcasts:
            if before_steps.get(step.version, (step.data, step.drop)) != (step.data, step.drop):
                yield new.warning(
                    step.where,
                    f"the upcast step for version {step.version} of event {event.name!r} changed: {refresh}, so "
                    f"stored events of version {step.version} are read through the new step",
                    "upcast-changed",
                )
    if dict(old.model.initial_data) != dict(new.model.initial_data):
        yield new.warning(
            new.written("/initial_data", "/aggregate"),
            f"the initial data changed: {refresh}, so every entity's data is recomputed from the new initial data",
            "initial-changed",
        )
    if old.model.initial != new.model.initial:
        yield new.warning(
            "/initial",
            f"the initial state changed from {old.model.initial!r} to {new.model.initial!r}: {refresh}, and "
            "every entity is replayed from the new one",
            "initial-changed",
        )


def removed_commands(old: Definition, new: Definition) -> Iterator[Finding]:
    for command in old.model.commands.values():
        if command.name not in new.model.commands:
            yield old.warning(
                command.where,
                f"command {command.name!r} is removed: clients that still send it get 404 (unknown command); "
                "tell them before deploying",
                "command-removed",
            )


# -- the two state machines side by side --------------------------------------------


class Product:
    """The product of the older and the new state machine from both initial states: each pair (s1, s2)
    says an entity the older definition has in s1 is in s2 under the new one. Every event valid in s1
    under the older definition (by each name it may be stored under) must be valid in s2."""

    def __init__(self, old: Definition, new: Definition) -> None:
        self.old, self.new = old, new
        start = (old.model.initial, new.model.initial)
        self.paths: dict[tuple[str, str], tuple[str, ...]] = {start: ()}
        self.failures: dict[str, tuple[tuple[str, ...], str, str, str]] = {}  # new event -> (path, name, s1, s2)
        todo = deque([start])
        while todo:
            pair = todo.popleft()
            todo.extend(self._steps(pair))  # each pair the first time it is reached

    def _steps(self, pair: tuple[str, str]) -> Iterator[tuple[str, str]]:
        s1, s2 = pair
        for event in self.old.model.events.values():
            t1 = self.old.compiled.next_state(s1, event.name)
            if t1 is None:
                continue
            for name in event.stored_names:
                reader = self.new.compiled.readers.get(name)
                if reader is None:
                    continue  # reported by stored_types
                path = (*self.paths[pair], name)
                t2 = self.new.compiled.next_state(s2, reader.name)
                if t2 is None:
                    self.failures.setdefault(reader.name, (path, name, s1, s2))
                    continue
                if (t1, t2) not in self.paths:
                    self.paths[(t1, t2)] = path
                    yield (t1, t2)

    def findings(self) -> Iterator[Finding]:
        new_states, old_reached = self.new.model.states, {s1 for s1, _ in self.paths}
        for name, (path, stored, s1, s2) in sorted(self.failures.items()):
            event = self.new.model.events[name]
            before = " → ".join(path[:-1])
            read_as = "" if stored == name else f" (read as {name!r})"
            where = (
                f"occurs in state {s1!r}, which this definition no longer allows"
                if s1 == s2
                else f"occurs in state {s1!r} under the older definition, but the entity is in {s2!r} under this "
                f"one, where {name!r} cannot occur"
            )
            yield self.new.error(
                self.new.written(f"{event.where}/from", event.where),
                "replaying a history valid under the older definition fails: "
                f"{f'after {before}' if before else 'as its first event'}, {stored!r}{read_as} {where}; let it "
                "occur there (`from`), or map the entity elsewhere with a retired event",
                "replay-transition",
            )
        mapped: dict[str, set[str]] = {}
        for (s1, s2), path in self.paths.items():
            if path and s1 != s2:
                mapped.setdefault(s1, set()).add(s2)
        for s1, targets in sorted(mapped.items()):
            kept = s1 in new_states
            side = self.new if kept else self.old
            yield side.warning(
                pointer("states", s1),
                f"state {s1!r}{'' if kept else ' is removed'}: entities the older definition has in {s1!r} are "
                f"in {_states(sorted(targets))} under this one once replayed",
                "state-mapped",
            )
        for s1 in self.old.model.states:
            if s1 not in new_states and s1 not in old_reached and self._reachable_in_old(s1):
                yield self.old.error(
                    pointer("states", s1),
                    f"state {s1!r} is removed while entities may be in it, and the events that lead there are not "
                    "replayed by the new definition; map them out with a retired event whose `to` names a current "
                    "state",
                    "state-removed",
                )

    def _reachable_in_old(self, state: str) -> bool:
        compiled, seen = self.old.compiled, {self.old.model.initial}
        todo = deque(seen)
        while todo:
            here = todo.popleft()
            for event in self.old.model.events:
                there = compiled.next_state(here, event)
                if there is not None and there not in seen:
                    seen.add(there)
                    todo.append(there)
        return state in seen
