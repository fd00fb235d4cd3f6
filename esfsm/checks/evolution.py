"""Versioned events: upcast steps, former names and retired events.

An event's stored data outlives its definition: every older version must have
one upcast step leading to the next, each step's result must fit the schema of
the version it gives, a stored name must be read as exactly one event, and a
retired event is only replayed, never emitted. What can be told without running
anything is told here; what cannot (an expression's result) gives no finding.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from jsonschema import Draft202012Validator

from esfsm import model as m
from esfsm.checks.context import Context, Rule
from esfsm.checks.json_schemas import declared_fields
from esfsm.checks.schema_errors import describe, explain, schema_error_message
from esfsm.expressions import Template, free_variables, syntax_error, template_expressions
from esfsm.findings import Finding, did_you_mean, one_of, pointer

_META_VALIDATOR = Draft202012Validator(Draft202012Validator.META_SCHEMA)


def _versions(numbers: list[int]) -> str:
    """'version 2' or 'versions 1, 2'."""
    return ("version " if len(numbers) == 1 else "versions ") + ", ".join(str(n) for n in numbers)


def upcast_versions(ctx: Context) -> Iterator[Finding]:
    """One step for each version 1 .. version-1, and no other."""
    for event in ctx.aggregate.events.values():
        if event.version == 1:
            if event.upcasts:
                yield ctx.error(
                    f"{event.where}/upcast",
                    f"event {event.name!r} is at version 1, so it has no older version to upcast; "
                    "raise its 'version' when its data changes shape",
                    "upcast-version",
                )
            continue
        seen: dict[int, int] = {}
        for i, step in enumerate(event.upcasts):
            if step.version >= event.version:
                yield ctx.error(
                    f"{step.where}/version",
                    f"event {event.name!r} is at version {event.version}: an upcast step reads an older version "
                    f"(1 to {event.version - 1}), not version {step.version}",
                    "upcast-version",
                )
            elif step.version in seen:
                yield ctx.error(
                    f"{step.where}/version",
                    f"version {step.version} of event {event.name!r} already has an upcast step "
                    f"(upcast/{seen[step.version]}); give one step per older version",
                    "upcast-version",
                )
            else:
                seen[step.version] = i
        missing = [v for v in range(1, event.version) if v not in seen]
        if not missing:
            continue
        what = "has no 'upcast' steps" if not event.upcasts else f"no upcast step reads {_versions(missing)}"
        yield ctx.error(
            f"{event.where}/version",
            f"event {event.name!r} is at version {event.version} but {what}: stored events of "
            f"{_versions(missing)} could not be read; add a step with 'version: {missing[0]}' "
            f"(it gives version {missing[0] + 1})",
            "upcast-missing",
        )


def upcast_schemas(ctx: Context) -> Iterator[Finding]:
    """A step's `schema` is a JSON Schema like the others (the checker reads it)."""
    for event in ctx.aggregate.events.values():
        for step in event.upcasts:
            if step.schema is None:
                continue
            for error in _META_VALIDATOR.iter_errors(step.schema):
                for leaf in explain(error):
                    yield ctx.error(
                        f"{step.where}/schema" + pointer(*leaf.absolute_path),
                        f"not a valid JSON Schema: {schema_error_message(leaf)}",
                        "invalid-json-schema",
                    )


def upcast_drops(ctx: Context) -> Iterator[Finding]:
    """`drop` names fields of the version the step reads, when its schema says which."""
    for event in ctx.aggregate.events.values():
        for step in event.upcasts:
            declared = declared_fields(step.schema)
            set_keys = set(step.data) if isinstance(step.data, Mapping) else set()
            for i, name in enumerate(step.drop):
                ptr = f"{step.where}/drop/{i}"
                if name in set_keys:
                    yield ctx.warning(
                        ptr,
                        f"field {name!r} is set by this step's 'data' and dropped after it, so it ends up absent",
                        "upcast-drop",
                    )
                elif declared is not None and name not in declared:
                    yield ctx.error(
                        ptr,
                        f"event {event.name!r} at version {step.version} declares no field {name!r}"
                        f"{did_you_mean(name, declared) or f'; expected one of {one_of(declared)}'}",
                        "upcast-drop",
                    )


def _target(event: m.Event, step: m.Upcast) -> tuple[Any, str]:
    """The schema of the data step gives (version + 1), when the definition says it, and how to name it."""
    name = f"event {event.name!r} at version {step.version + 1}"
    if step.version == event.version - 1:
        return event.schema, name
    following = next((s for s in event.upcasts if s.version == step.version + 1), None)
    return (following.schema if following is not None else None), name


def upcast_results(ctx: Context) -> Iterator[Finding]:
    """A merged step's result (the fields it reads, plus those it sets, minus those it drops)
    against the schema of the version it gives: required fields, fields not allowed, constants."""
    for event in ctx.aggregate.events.values():
        for step in event.upcasts:
            target, name = _target(event, step)
            if step.version >= event.version or not isinstance(target, Mapping):
                continue
            if not isinstance(step.data, Mapping):
                continue  # one expression gives the whole data: its result is not known here
            yield from _required(ctx, step, target, name)
            yield from _set_fields(ctx, step, target, name)


def _required(ctx: Context, step: m.Upcast, target: Mapping[str, Any], name: str) -> Iterator[Finding]:
    carried = declared_fields(step.schema)
    required = target.get("required")
    if carried is None or not isinstance(required, list):
        return  # what the stored data holds is not known
    result = (carried | set(step.data)) - set(step.drop)
    has_data = f"{step.where}/data" in ctx.doc.positions
    for field in required:
        if not isinstance(field, str) or field in result:
            continue
        how = "drops it" if field in step.drop else f"neither sets it nor finds it in version {step.version}'s schema"
        yield ctx.error(
            f"{step.where}/data" if has_data else step.where,
            f"{name} requires field {field!r}, but this step {how}; set it in 'data'",
            "upcast-result",
        )


def _set_fields(ctx: Context, step: m.Upcast, target: Mapping[str, Any], name: str) -> Iterator[Finding]:
    props = target.get("properties")
    props = props if isinstance(props, Mapping) else {}
    closed = target.get("additionalProperties") is False
    for field, raw in step.data.items():
        ptr = f"{step.where}/data" + pointer(field)
        if field in step.drop:
            continue  # reported by upcast_drops
        if closed and field not in props:
            yield ctx.doc.finding(
                ptr,
                f"{name} allows no field {field!r} (additionalProperties: false)"
                f"{did_you_mean(field, props) or f'; expected one of {one_of(props)}'}",
                "upcast-result",
                key=True,
            )
            continue
        if field not in props or not isinstance(props[field], Mapping):
            continue
        known, value = _constant(raw, ptr)
        if not known:
            continue
        try:
            errors = list(Draft202012Validator(props[field]).iter_errors(value))
        except Exception:  # noqa: BLE001 - an invalid schema is reported where it is written
            continue
        for error in errors[:1]:
            for leaf in explain(error)[:1]:
                yield ctx.error(
                    ptr,
                    f"{describe(value)} does not fit field {field!r} of {name}: {schema_error_message(leaf)}",
                    "upcast-result",
                )


def _constant(raw: Any, where: str) -> tuple[bool, Any]:
    """(True, value) when a template reads no variable (a literal, or CEL of literals), else (False, None)."""
    sources = [source for _, source in template_expressions(raw, where)]
    if any(not s.strip() or syntax_error(s) or free_variables(s) for s in sources):
        return False, None
    try:
        return True, Template(raw, where).evaluate({})
    except Exception:  # noqa: BLE001 - an expression that fails on literals gives no constant to check
        return False, None


def former_names(ctx: Context) -> Iterator[Finding]:
    """A stored name is read as one event: not a current event's name, not listed by two events."""
    agg = ctx.aggregate
    owners: dict[str, str] = {}
    for event in agg.events.values():
        for i, old in enumerate(event.formerly):
            ptr = f"{event.where}/formerly/{i}"
            if old == event.name:
                yield ctx.error(ptr, f"{old!r} is this event's own name, not a former one", "formerly")
            elif old in agg.events:
                yield ctx.error(
                    ptr,
                    f"{old!r} is the name of a current event: stored events named {old!r} are read as that "
                    f"event, so it cannot also be a former name of {event.name!r}",
                    "formerly",
                )
            elif old in owners:
                yield ctx.error(
                    ptr,
                    f"{old!r} is already a former name of event {owners[old]!r}: stored events of one name "
                    "are read as one event",
                    "formerly",
                )
            else:
                owners[old] = event.name


def retired_emits(ctx: Context) -> Iterator[Finding]:
    """A retired event only replays: no command may emit it."""
    agg = ctx.aggregate
    for command in agg.commands.values():
        for emit in command.emits:
            event = agg.events.get(emit.event)
            if event is not None and event.retired:
                yield ctx.error(
                    f"{emit.where}/event",
                    f"event {event.name!r} is retired: the events already stored only replay, and no command "
                    "may emit it; emit another event, or remove 'retired: true'",
                    "retired-emit",
                )


RULES: tuple[Rule, ...] = (
    upcast_versions,
    upcast_schemas,
    upcast_drops,
    upcast_results,
    former_names,
    retired_emits,
)
