"""Commands and what they write: emitted event data, 'apply' fields, and whether a command can ever be accepted."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from esfsm.checks.context import Context, Rule
from esfsm.checks.json_schemas import declared_fields
from esfsm.checks.schema_errors import describe
from esfsm.findings import Finding, did_you_mean, one_of, pointer


def emit_data_fields(ctx: Context) -> Iterator[Finding]:
    agg = ctx.aggregate
    for command in agg.commands.values():
        for emit in command.emits:
            event = agg.events.get(emit.event)
            if event is None or not isinstance(emit.data, Mapping):
                continue
            yield from _undeclared(
                ctx,
                f"{emit.where}/data",
                emit.data,
                declared_fields(event.schema),
                f"event {event.name!r}",
                "emit-unknown-field",
            )
            required = event.schema.get("required", []) if isinstance(event.schema, Mapping) else []
            if not isinstance(required, list):
                continue  # reported by json_schemas
            for field in required:
                if isinstance(field, str) and field not in emit.data:
                    has_data = f"{emit.where}/data" in ctx.doc.positions
                    yield ctx.error(
                        f"{emit.where}/data" if has_data else emit.where,
                        f"event {event.name!r} requires field {field!r}, which this emit does not set",
                        "emit-missing-field",
                    )


def template_shapes(ctx: Context) -> Iterator[Finding]:
    """Event data, 'apply' and upcast 'data' must give a mapping: write one, or one CEL expression that gives a map."""
    places = [(f"{e.where}/data", e.data) for c in ctx.aggregate.commands.values() for e in c.emits]
    places += [(f"{e.where}/apply", e.apply) for e in ctx.aggregate.events.values()]
    places += [(f"{u.where}/data", u.data) for e in ctx.aggregate.events.values() for u in e.upcasts]
    for ptr, template in places:
        if ptr in ctx.doc.positions and not isinstance(template, (Mapping, str)):
            yield ctx.error(
                ptr,
                f"expected a mapping of field to CEL expression, or one CEL expression giving a map; "
                f"got {describe(template)}",
                "template-shape",
            )


def apply_fields(ctx: Context) -> Iterator[Finding]:
    agg = ctx.aggregate
    declared = declared_fields(agg.data_schema)
    if declared is None:
        return
    for event in agg.events.values():
        if isinstance(event.apply, Mapping):
            yield from _undeclared(
                ctx, f"{event.where}/apply", event.apply, declared, "the aggregate's data", "apply-unknown-field"
            )


def _undeclared(
    ctx: Context, where: str, fields: Mapping[str, object], declared: set[str] | None, owner: str, rule: str
) -> Iterator[Finding]:
    """A finding at each of fields (a template's keys, at where) that owner does not declare."""
    if declared is None:
        return
    for field in fields:
        if field not in declared:
            yield ctx.doc.finding(
                where + pointer(field),
                f"{owner} declares no field {field!r}"
                f"{did_you_mean(field, declared) or f'; expected one of {one_of(declared)}'}",
                rule,
                key=True,
            )


RULES: tuple[Rule, ...] = (emit_data_fields, template_shapes, apply_fields)


def command_acceptance(ctx: Context) -> Iterator[Finding]:
    """Runs only on an otherwise valid definition: it compiles the aggregate."""
    from esfsm.compiler import CompiledAggregate

    compiled = CompiledAggregate(ctx.aggregate)
    for name, command in compiled.commands.items():
        if not command.accepted_states:
            events = " → ".join(e.event for e in command.model.emits)
            yield ctx.error(
                command.model.where,
                f"command {name!r} can never be accepted: no state allows its events ({events}) in order",
                "never-accepted",
            )
            continue
        for i, state in enumerate(command.model.in_states or ()):
            if state not in command.accepted_states:
                yield ctx.warning(
                    f"{command.model.where}/in/{i}",
                    f"command {name!r} lists state {state!r} in 'in', but its events are not valid there",
                    "in-state-never-accepted",
                )
