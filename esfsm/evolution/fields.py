"""The data of stored events against what the new definition reads of it.

A stored event keeps the data it was written with. The new definition reads it
through its upcast steps and apply; a field they read that events of some stored
version may lack (that version's schema does not require it, no earlier step
sets it, the older definition never read it) makes replay fail. A schema change
that nothing reads cannot change replay: a warning.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from esfsm import model as m
from esfsm.checks.json_schemas import declared_fields
from esfsm.evolution.definition import Definition
from esfsm.expressions import field_references, syntax_error, template_expressions
from esfsm.findings import Finding, one_of


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
