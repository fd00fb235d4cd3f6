"""CEL expressions (authorize, rules, emit conditions and data, apply, upcast data): syntax, names and cost."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from esfsm import model as m
from esfsm.checks.context import Context, Rule
from esfsm.checks.json_schemas import declared_fields
from esfsm.expressions import (
    APPLY_VARIABLES,
    DECIDE_VARIABLES,
    FUNCTIONS,
    comprehensions,
    field_references,
    free_variables,
    syntax_error,
    template_expressions,
    unknown_functions,
)
from esfsm.findings import Finding, did_you_mean, one_of

UPCAST_VARIABLES = frozenset({"event", "type", "key"})
"""What an upcast step's `data` may read: the stored data at that version, the name it was stored
under and the entity key. No `now`, no state: reading an event must give the same data every time."""


@dataclass(frozen=True)
class Place:
    """One CEL expression of a definition, and what it may read."""

    ptr: str
    source: str
    allowed: frozenset[str]
    command: m.Command | None = None
    event_schema: Any = None  # what `event` holds there (None: not known, or no event)
    event_root: str = ""  # the pointer of that schema
    event_owner: str = ""  # "event 'x'" (at version N) as messages name it


def _expressions(agg: m.Aggregate) -> Iterator[Place]:
    """Every CEL expression of the definition, with the variables it may read."""
    for r in agg.authorize:
        yield Place(f"{r.where}/rule", r.source, DECIDE_VARIABLES)
    for command in agg.commands.values():
        for r in command.rules:
            yield Place(f"{r.where}/rule", r.source, DECIDE_VARIABLES, command)
        for emit in command.emits:
            if emit.condition is not None:
                yield Place(f"{emit.where}/if", emit.condition, DECIDE_VARIABLES, command)
            for ptr, source in template_expressions(emit.data, f"{emit.where}/data"):
                yield Place(ptr, source, DECIDE_VARIABLES, command)
    for event in agg.events.values():
        for ptr, source in template_expressions(event.apply, f"{event.where}/apply"):
            owner = f"event {event.name!r}"
            yield Place(ptr, source, APPLY_VARIABLES, None, event.schema, f"{event.where}/schema", owner)
        for step in event.upcasts:
            owner = f"event {event.name!r} at version {step.version}"
            for ptr, source in template_expressions(step.data, f"{step.where}/data"):
                yield Place(ptr, source, UPCAST_VARIABLES, None, step.schema, f"{step.where}/schema", owner)


def cel_expressions(ctx: Context) -> Iterator[Finding]:
    agg = ctx.aggregate
    for place in _expressions(agg):
        ptr, source, allowed, command = place.ptr, place.source, place.allowed, place.command
        if not source.strip():
            yield ctx.error(
                ptr,
                f"{source!r} is not a CEL expression: a string in a template is CEL; write '\"\"' for an empty string",
                "cel-syntax",
            )
            continue
        problem = syntax_error(source)
        if problem:
            yield ctx.error(ptr, f"CEL syntax error in {source!r}: {_cel_problem(problem)}", "cel-syntax")
            continue
        for name in unknown_functions(source):
            yield ctx.error(
                ptr,
                f"unknown CEL function {name!r} in {source!r}"
                f"{did_you_mean(name, FUNCTIONS) or ''}; available: {', '.join(sorted(FUNCTIONS))}",
                "cel-unknown-function",
            )
        for name in sorted(free_variables(source) - allowed):
            if name == "now" and allowed in (APPLY_VARIABLES, UPCAST_VARIABLES):
                where = "apply" if allowed is APPLY_VARIABLES else "upcast"
                yield ctx.error(
                    ptr,
                    f"'now' cannot be used in '{where}': replaying events must give the same data "
                    "every time; put the time in the event data instead",
                    f"now-in-{where}",
                )
            else:
                yield ctx.error(
                    ptr,
                    f"unknown variable {name!r} in {source!r}"
                    f"{did_you_mean(name, allowed) or f'; expected one of {one_of(allowed)}'}",
                    "cel-unknown-variable",
                )
        schemas = {
            "cmd": command.schema if command else None,
            "data": agg.data_schema,
            "event": place.event_schema,
        }
        extra = {"data": set(agg.initial_data)}
        for var, field in field_references(source):
            if var not in allowed:
                continue  # reported above as an unknown variable
            declared = declared_fields(schemas.get(var))
            if declared is None or field in declared or field in extra.get(var, ()):
                continue
            known = declared | extra.get(var, set())
            what = {
                "cmd": f"command {command.name!r}" if command else "",
                "data": "the aggregate's data",
                "event": place.event_owner,
            }[var]
            yield ctx.error(
                ptr,
                f"{var}.{field}: {what} declares no field {field!r}"
                f"{did_you_mean(field, known) or f'; expected one of {one_of(known)}'}",
                "cel-unknown-field",
            )


MAX_ITEMS = 1000  # longest list a comprehension may iterate over (map/filter cost grows with its square)


def _schema_at(schema: Any, fields: list[str]) -> tuple[Any, str]:
    """The subschema of a field path, and its pointer inside the schema."""
    where = ""
    for field in fields:
        props = schema.get("properties") if isinstance(schema, Mapping) else None
        if not isinstance(props, Mapping) or field not in props:
            return None, where
        schema, where = props[field], f"{where}/properties/{field}"
    return schema, where


def bounded_comprehensions(ctx: Context) -> Iterator[Finding]:
    """CEL has no cost limit here, and its map/filter take time growing with the square of the
    list: a comprehension must iterate over a list whose schema bounds it, and never nest."""
    agg = ctx.aggregate
    unbounded: dict[str, tuple[str, list[str]]] = {}  # schema pointer -> (list path, expressions)
    for place in _expressions(agg):
        ptr, source, command = place.ptr, place.source, place.command
        if not source.strip() or syntax_error(source):
            continue
        roots = {
            "cmd": (command.schema if command else None, f"{command.where}/schema" if command else ""),
            "data": (agg.data_schema, "/data"),
            "event": (place.event_schema, place.event_root),
        }
        for c in comprehensions(source):
            if c.nested:
                yield ctx.error(
                    ptr,
                    f"a comprehension ({c.macro}) inside another in {source!r}: its cost is the "
                    "product of the list sizes; flatten it, or keep a derived field up to date in 'apply'",
                    "cel-unbounded",
                )
                continue
            if c.receiver is None:
                continue  # a literal list, or the result of a bounded comprehension
            var, *fields = c.receiver.split(".")
            if var == "cmd" and command is None:
                yield ctx.error(
                    ptr,
                    f"{c.receiver}.{c.macro}(…) in an authorize rule: authorize runs before the "
                    "payload is checked against a schema, so nothing bounds that list; iterate over "
                    "it in the command's own rules",
                    "cel-unbounded",
                )
                continue
            if var not in roots or roots[var][0] is None or not fields:
                continue  # a comprehension variable (nested, reported above) or an unknown name
            schema, where = _schema_at(roots[var][0], fields)
            bound = schema.get("maxItems") if isinstance(schema, Mapping) else None
            if not (isinstance(bound, int) and bound <= MAX_ITEMS):
                unbounded.setdefault(f"{roots[var][1]}{where}", (c.receiver, []))[1].append(ptr)
    for at, (path, users) in sorted(unbounded.items()):
        yield ctx.error(
            at,
            f"{path} is iterated by a comprehension (at {users[0]}"
            f"{f' and {len(users) - 1} more' if len(users) > 1 else ''}) but its schema sets no "
            f"'maxItems' of at most {MAX_ITEMS}: CEL's map and filter take time growing with the "
            "square of the list's length",
            "cel-unbounded",
        )


_TOKEN_SET = re.compile(r"\{(?:'[^']*'|[A-Z_]+|, )*\bIDENTIFIER(?:'[^']*'|[A-Z_]+|, )*\}")
_PARSER_PHRASES = (
    (re.compile(r"^mismatched input (.+?) expecting (.+?)( \(at .*)?$"), r"expected \2, got \1\3"),
    (re.compile(r"^extraneous input (.+?) expecting (.+?)( \(at .*)?$"), r"unexpected \1, expected \2\3"),
    (re.compile(r"^no viable alternative at input (.+?)( \(at .*)?$"), r"unexpected \1\2"),
    (re.compile(r"^token recognition error at: (.+?)( \(at .*)?$"), r"unexpected \1\2"),
    (re.compile(r"^missing (.+?) at (.+?)( \(at .*)?$"), r"missing \1 before \2\3"),
)


def _cel_problem(problem: str) -> str:
    """The CEL parser's complaint in words: no token sets or '<EOF>', the column named as the expression's."""
    problem = problem.removeprefix("Syntax error: ")
    problem = _TOKEN_SET.sub("a value", problem).replace("'<EOF>'", "<EOF>")
    problem = problem.replace("<EOF>", "the end of the expression")
    for pattern, replacement in _PARSER_PHRASES:
        problem = pattern.sub(replacement, problem)
    return re.sub(r"\(at column (\d+)\)$", r"(at character \1)", problem)


RULES: tuple[Rule, ...] = (cel_expressions, bounded_comprehensions)
