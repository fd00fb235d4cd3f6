"""Check definitions: the DSL's JSON Schema first, then semantic rules.

Each semantic rule is a small named function that yields findings; the driver
runs all of them and returns every finding at once, sorted by position. Rules
never stop at the first problem and never lose the JSON pointer.
"""

from __future__ import annotations

import functools
import json
import re
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from esfsm import model as m
from esfsm.expressions import (
    APPLY_VARIABLES,
    DECIDE_VARIABLES,
    field_references,
    free_variables,
    syntax_error,
    template_expressions,
)
from esfsm.findings import Finding, did_you_mean, has_errors, one_of, pointer
from esfsm.loader import Document

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
SUBJECT_TOKEN = re.compile(r"[^.*>\s]+")
STREAM_NAME = re.compile(r"[^.*>\s/\\]{1,255}")
BUCKET_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")


@functools.cache
def dsl_schema(name: str = "aggregate") -> dict[str, Any]:
    with open(SCHEMA_DIR / f"{name}.schema.json", encoding="utf-8") as handle:
        return json.load(handle)


@functools.cache
def _dsl_validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(dsl_schema(name))


# -- the DSL schema ----------------------------------------------------------


def schema_findings(doc: Document, schema: str = "aggregate") -> list[Finding]:
    """The document against the DSL's JSON Schema, one finding per error."""
    findings = []
    for error in _dsl_validator(schema).iter_errors(doc.data):
        findings.extend(_schema_error_findings(doc, _deepest(error)))
    return findings


def _deepest(error: ValidationError) -> ValidationError:
    """For oneOf/anyOf, the sub-error that explains the failure best."""
    while error.context:
        relevant = [e for e in error.context if e.validator != "type" or len(error.context) == 1]
        if not relevant:
            break
        error = best_match(relevant)
    return error


def _schema_error_findings(doc: Document, error: ValidationError) -> Iterator[Finding]:
    where = pointer(*error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        allowed = list(error.schema.get("properties", {}))
        for extra in error.instance:
            if extra not in allowed:
                yield doc.finding(
                    where + pointer(extra),
                    f"unknown key {extra!r}{did_you_mean(extra, allowed) or f'; expected one of {one_of(allowed)}'}",
                    "dsl-unknown-key",
                )
        return
    if error.validator == "required" and isinstance(error.instance, Mapping):
        for key in error.validator_value:
            if key not in error.instance:
                yield doc.finding(where, f"missing required key {key!r}", "dsl-missing-key")
        return
    if error.validator == "pattern" and "propertyNames" in error.absolute_schema_path:
        yield doc.finding(
            where + pointer(error.instance),
            f"{error.instance!r} is not a valid name: use letters, digits, '_' and '-', "
            "starting with a letter or '_'",
            "dsl-name",
        )
        return
    if error.validator == "pattern" and list(error.absolute_path) == ["aggregate"]:
        yield doc.finding(
            where,
            f"{error.instance!r} is not a valid aggregate name: use lowercase letters, digits and '_', "
            "starting with a letter",
            "dsl-name",
        )
        return
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        yield doc.finding(where, f"expected {_article(expected)}, got {error.instance!r}", "dsl-type")
        return
    yield doc.finding(where, error.message, f"dsl-{error.validator}")


def _article(kind: str) -> str:
    return {"object": "a mapping", "array": "a list", "null": "nothing"}.get(kind, f"a {kind}" if kind[0] not in "aeiou" else f"an {kind}")


# -- semantic rules ----------------------------------------------------------


@dataclass
class Context:
    doc: Document
    aggregate: m.Aggregate

    def error(self, ptr: str, message: str, rule: str) -> Finding:
        return self.doc.finding(ptr, message, rule)

    def warning(self, ptr: str, message: str, rule: str) -> Finding:
        return self.doc.finding(ptr, message, rule, "warning")


Rule = Callable[[Context], Iterator[Finding]]
RULES: list[Rule] = []


def rule(function: Rule) -> Rule:
    RULES.append(function)
    return function


def _state_refs(agg: m.Aggregate) -> Iterator[tuple[str, str]]:
    """(pointer, state name) for every state a definition names."""
    yield "/initial", agg.initial
    for event in agg.events.values():
        for i, source in enumerate(event.sources):
            if source != m.ANY_STATE:
                yield f"{event.where}/from/{i}", source
        if event.dest is not None:
            yield f"{event.where}/to", event.dest
    for command in agg.commands.values():
        for i, state in enumerate(command.in_states or ()):
            yield f"{command.where}/in/{i}", state


@rule
def unknown_states(ctx: Context) -> Iterator[Finding]:
    states = ctx.aggregate.states
    for ptr, name in _state_refs(ctx.aggregate):
        if name not in states:
            where = ptr if ptr in ctx.doc.positions else ptr.rsplit("/", 1)[0]
            yield ctx.error(where, f"{name!r} is not a declared state{did_you_mean(name, states) or f'; expected one of {one_of(states)}'}",
                            "unknown-state")


@rule
def unknown_events(ctx: Context) -> Iterator[Finding]:
    events = ctx.aggregate.events
    for command in ctx.aggregate.commands.values():
        for emit in command.emits:
            if emit.event not in events:
                yield ctx.error(
                    f"{emit.where}/event",
                    f"{emit.event!r} is not a declared event{did_you_mean(emit.event, events) or f'; expected one of {one_of(events)}'}",
                    "unknown-event",
                )


@rule
def final_state_exits(ctx: Context) -> Iterator[Finding]:
    states = ctx.aggregate.states
    for event in ctx.aggregate.events.values():
        for source in event.sources:
            if source in states and states[source].final:
                yield ctx.error(f"{event.where}/from",
                                f"event {event.name!r} leaves the final state {source!r}; no event may occur in a final state",
                                "final-state-exit")


@rule
def unreachable_states(ctx: Context) -> Iterator[Finding]:
    agg = ctx.aggregate
    if agg.initial not in agg.states:
        return
    reached = {agg.initial}
    todo = deque([agg.initial])
    while todo:
        state = todo.popleft()
        for event in agg.events.values():
            if state in agg.source_states(event) and event.dest in agg.states and event.dest not in reached:
                reached.add(event.dest)
                todo.append(event.dest)
    for name in agg.states:
        if name not in reached:
            yield ctx.warning(pointer("states", name), f"state {name!r} is unreachable from the initial state {agg.initial!r}",
                              "unreachable-state")


@rule
def unused_events(ctx: Context) -> Iterator[Finding]:
    emitted = {e.event for c in ctx.aggregate.commands.values() for e in c.emits}
    for event in ctx.aggregate.events.values():
        if event.name not in emitted:
            yield ctx.warning(event.where, f"event {event.name!r} is emitted by no command", "unused-event")


def _expressions(agg: m.Aggregate) -> Iterator[tuple[str, str, frozenset[str], m.Command | None, m.Event | None]]:
    """(pointer, source, allowed variables, command, event) for every CEL expression."""
    for r in agg.authorize:
        yield f"{r.where}/rule", r.source, DECIDE_VARIABLES, None, None
    for command in agg.commands.values():
        for r in command.rules:
            yield f"{r.where}/rule", r.source, DECIDE_VARIABLES, command, None
        for emit in command.emits:
            if emit.condition is not None:
                yield f"{emit.where}/if", emit.condition, DECIDE_VARIABLES, command, None
            for ptr, source in template_expressions(emit.data, f"{emit.where}/data"):
                yield ptr, source, DECIDE_VARIABLES, command, None
    for event in agg.events.values():
        for ptr, source in template_expressions(event.apply, f"{event.where}/apply"):
            yield ptr, source, APPLY_VARIABLES, None, event


@rule
def cel_expressions(ctx: Context) -> Iterator[Finding]:
    agg = ctx.aggregate
    for ptr, source, allowed, command, event in _expressions(agg):
        problem = syntax_error(source)
        if problem:
            yield ctx.error(ptr, f"CEL syntax error in {source!r}: {problem}", "cel-syntax")
            continue
        for name in sorted(free_variables(source) - allowed):
            if name == "now" and allowed is APPLY_VARIABLES:
                yield ctx.error(ptr, "'now' cannot be used in 'apply': replaying events must give the same data every time; "
                                "put the time in the event data instead", "now-in-apply")
            else:
                yield ctx.error(ptr, f"unknown variable {name!r} in {source!r}{did_you_mean(name, allowed) or ''}; "
                                f"available here: {', '.join(sorted(allowed))}", "cel-unknown-variable")
        schemas = {
            "cmd": command.schema if command else None,
            "data": agg.data_schema,
            "event": event.schema if event else None,
        }
        extra = {"data": set(agg.initial_data)}
        for var, field in field_references(source):
            declared = _declared(schemas.get(var))
            if declared is None or field in declared or field in extra.get(var, ()):
                continue
            what = {"cmd": f"command {command.name!r}" if command else "", "data": "the aggregate's data",
                    "event": f"event {event.name!r}" if event else ""}[var]
            yield ctx.error(ptr, f"{var}.{field}: {what} declares no field {field!r}{did_you_mean(field, declared)}",
                            "cel-unknown-field")


def _declared(schema: Any) -> set[str] | None:
    """Field names a schema declares, or None when it does not constrain them."""
    if not isinstance(schema, Mapping) or not isinstance(schema.get("properties"), Mapping):
        return None
    return set(schema["properties"])


@rule
def emit_data_fields(ctx: Context) -> Iterator[Finding]:
    agg = ctx.aggregate
    for command in agg.commands.values():
        for emit in command.emits:
            event = agg.events.get(emit.event)
            if event is None or not isinstance(emit.data, Mapping):
                continue
            declared = _declared(event.schema)
            if declared is not None:
                for field in emit.data:
                    if field not in declared:
                        yield ctx.error(f"{emit.where}/data/{field}",
                                        f"event {event.name!r} declares no field {field!r}{did_you_mean(field, declared)}",
                                        "emit-unknown-field")
            required = event.schema.get("required", []) if isinstance(event.schema, Mapping) else []
            for field in required:
                if field not in emit.data:
                    yield ctx.error(f"{emit.where}/data" if "data" in _keys(ctx, emit.where) else emit.where,
                                    f"event {event.name!r} requires field {field!r}, which this emit does not set",
                                    "emit-missing-field")


def _keys(ctx: Context, where: str) -> set[str]:
    prefix = where + "/"
    return {p[len(prefix):].split("/")[0] for p in ctx.doc.positions if p.startswith(prefix)}


@rule
def apply_fields(ctx: Context) -> Iterator[Finding]:
    agg = ctx.aggregate
    declared = _declared(agg.data_schema)
    if declared is None:
        return
    for event in agg.events.values():
        if isinstance(event.apply, Mapping):
            for field in event.apply:
                if field not in declared:
                    yield ctx.error(f"{event.where}/apply/{field}",
                                    f"the aggregate's data declares no field {field!r}{did_you_mean(field, declared)}",
                                    "apply-unknown-field")


@rule
def json_schemas(ctx: Context) -> Iterator[Finding]:
    agg = ctx.aggregate
    places = [("/data", agg.data_schema)]
    places += [(f"{c.where}/schema", c.schema) for c in agg.commands.values()]
    places += [(f"{e.where}/schema", e.schema) for e in agg.events.values()]
    for ptr, schema in places:
        if ptr not in ctx.doc.positions:
            continue
        for error in Draft202012Validator(Draft202012Validator.META_SCHEMA).iter_errors(schema):
            yield ctx.error(ptr + pointer(*error.absolute_path),
                            f"not a valid JSON Schema: {error.message}", "invalid-json-schema")


@rule
def initial_data(ctx: Context) -> Iterator[Finding]:
    agg = ctx.aggregate
    if "/initial_data" not in ctx.doc.positions:
        return
    try:
        validator = Draft202012Validator(agg.data_schema)
        errors = list(validator.iter_errors(dict(agg.initial_data)))
    except Exception:  # an invalid data schema is reported by json_schemas
        return
    for error in errors:
        yield ctx.error("/initial_data" + pointer(*error.absolute_path),
                        f"initial data does not match the data schema: {error.message}", "initial-data")


@rule
def nats_names(ctx: Context) -> Iterator[Finding]:
    nats = ctx.aggregate.nats
    for field in ("commands", "events"):
        value = getattr(nats, field)
        if not all(SUBJECT_TOKEN.fullmatch(t) for t in value.split(".")):
            yield ctx.error(f"/nats/{field}",
                            f"{value!r} is not a valid subject prefix: dot-separated tokens without spaces, '*' or '>'",
                            "invalid-nats-name")
    if not STREAM_NAME.fullmatch(nats.stream):
        yield ctx.error("/nats/stream", f"{nats.stream!r} is not a valid stream name: no spaces, '.', '*', '>', '/' or '\\'",
                        "invalid-nats-name")
    if not BUCKET_NAME.fullmatch(nats.bucket):
        yield ctx.error("/nats/bucket", f"{nats.bucket!r} is not a valid bucket name: letters, digits, '_' and '-' only",
                        "invalid-nats-name")


def command_acceptance(ctx: Context) -> Iterator[Finding]:
    """Runs only on an otherwise valid definition: it compiles the aggregate."""
    from esfsm.compiler import CompiledAggregate

    compiled = CompiledAggregate(ctx.aggregate)
    for name, command in compiled.commands.items():
        if not command.accepted_states:
            events = " → ".join(e.event for e in command.model.emits)
            yield ctx.error(command.model.where,
                            f"command {name!r} can never be accepted: no state allows its events ({events}) in order",
                            "never-accepted")
            continue
        for i, state in enumerate(command.model.in_states or ()):
            if state not in command.accepted_states:
                yield ctx.warning(f"{command.model.where}/in/{i}",
                                  f"command {name!r} lists state {state!r} in 'in', but its events are not valid there",
                                  "in-state-never-accepted")


# -- across files ------------------------------------------------------------


def across_files(contexts: list[Context]) -> Iterator[Finding]:
    seen: dict[tuple[str, str], Context] = {}
    for ctx in contexts:
        agg = ctx.aggregate
        for what, value, ptr in (
            ("aggregate name", agg.name, "/aggregate"),
            ("commands subject", agg.nats.commands, "/nats/commands"),
            ("events subject", agg.nats.events, "/nats/events"),
            ("stream", agg.nats.stream, "/nats/stream"),
            ("bucket", agg.nats.bucket, "/nats/bucket"),
        ):
            first = seen.setdefault((what, value), ctx)
            if first is not ctx:
                yield ctx.error(ptr, f"{what} {value!r} is already used by aggregate {first.aggregate.name!r} "
                                f"in {first.doc.path}", "duplicate-name")
    prefixes = [(ctx, ctx.aggregate.nats.events) for ctx in contexts]
    for ctx, prefix in prefixes:
        for other, other_prefix in prefixes:
            if other is not ctx and prefix.startswith(other_prefix + "."):
                yield ctx.error("/nats/events", f"events subject {prefix!r} overlaps {other_prefix!r} of aggregate "
                                f"{other.aggregate.name!r}; streams cannot share subjects", "duplicate-name")


# -- the driver --------------------------------------------------------------


@dataclass
class CheckResult:
    aggregates: list[tuple[Document, m.Aggregate]]
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not has_errors(self.findings)


def check_documents(documents: list[Document]) -> CheckResult:
    findings: list[Finding] = []
    contexts: list[Context] = []
    for doc in documents:
        if doc.kind != "definition":
            continue
        problems = schema_findings(doc)
        findings.extend(problems)
        if problems:
            continue
        ctx = Context(doc, m.build(doc.data, doc.path))
        mine = [f for check in RULES for f in check(ctx)]
        if not has_errors(mine):
            mine.extend(command_acceptance(ctx))
        findings.extend(mine)
        contexts.append(ctx)
    findings.extend(across_files(contexts))
    broken = {f.file for f in findings if f.severity == "error"}
    return CheckResult(
        [(c.doc, c.aggregate) for c in contexts if c.doc.path not in broken],
        sorted(set(findings)),
    )
