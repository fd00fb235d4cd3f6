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

from collections.abc import Iterable, Iterator

from esfsm import model as m
from esfsm.evolution.definition import Definition, states_phrase
from esfsm.evolution.fields import read_fields, schema_changes
from esfsm.evolution.machines import Product
from esfsm.findings import Finding, did_you_mean
from esfsm.stored import StreamContents, unread

__all__ = ["Definition", "Product", "against_stream", "compare", "compare_aggregate"]


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
            f"entities in the stream are in {states_phrase(states)}, which this definition does not have: map them out "
            "with a retired event whose `to` names a current state, or keep the state",
            "state-removed",
        )


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
