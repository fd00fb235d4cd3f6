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
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from esfsm import model as m
from esfsm.expressions import (
    APPLY_VARIABLES,
    FUNCTIONS,
    comprehensions,
    unknown_functions,
    DECIDE_VARIABLES,
    field_references,
    free_variables,
    syntax_error,
    template_expressions,
)
from esfsm.findings import Finding, did_you_mean, has_errors, one_of, pointer
from esfsm.loader import Document
from esfsm.values import HEADER_NAME

# The JSON Schemas of the DSL live in the repository's schemas/; esfsm/schemas links
# there, so a wheel carries them inside the package. Where the link is not a folder
# (a checkout without symlinks), the repository's own is used.
_PACKAGE = Path(__file__).resolve().parent
SCHEMA_DIR = (_PACKAGE / "schemas").resolve()
if not SCHEMA_DIR.is_dir():
    SCHEMA_DIR = _PACKAGE.parent / "schemas"
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


HEADER_NAME_PATTERN = f"^{HEADER_NAME.pattern}$"  # scenarios.schema.json: header names and values NATS can carry
NO_LINE_BREAK_PATTERN = "^[^\\r\\n]*$"


def schema_findings(doc: Document, schema: str = "aggregate") -> list[Finding]:
    """The document against the DSL's JSON Schema, one finding per error."""
    findings = []
    for error in _dsl_validator(schema).iter_errors(doc.data):
        for leaf in _explain(error):
            findings.extend(_schema_error_findings(doc, leaf))
    return findings


def _explain(error: ValidationError) -> list[ValidationError]:
    """For oneOf/anyOf, the errors of the one branch the value was meant for.

    A branch whose type does not match the value at all (say 'null' for a
    mapping) is not what the author meant; when exactly one branch is left, its
    own errors explain the failure. When no branch's type matches, the error
    stays as it is and reads as a type error naming every type allowed.
    """
    if not error.context or error.validator not in ("oneOf", "anyOf") or _alternative_keys(error):
        return [error]
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    fitting = [errors for errors in branches.values() if not any(_type_mismatch(e) for e in errors)]
    if not fitting:
        return [error]
    if len(fitting) == 1:
        return [leaf for sub in fitting[0] for leaf in _explain(sub)]
    return _explain(best_match(sub for errors in fitting for sub in errors))


def _alternative_keys(error: ValidationError) -> list[str]:
    """The keys of a oneOf whose every branch is `{required: [key]}` (exactly one of them)."""
    if error.validator != "oneOf" or not isinstance(error.validator_value, list):
        return []
    branches = error.validator_value
    if not all(isinstance(b, dict) and list(b) == ["required"] and len(b["required"]) == 1 for b in branches):
        return []
    return [b["required"][0] for b in branches]


def _type_mismatch(error: ValidationError) -> bool:
    """The value itself (not something inside it) has the wrong type for this schema."""
    return error.validator == "type" and not error.relative_path


def _union_types(error: ValidationError) -> list[str]:
    types: list[str] = []
    for sub in error.context or ():
        if _type_mismatch(sub):
            value = sub.validator_value
            types += [t for t in (value if isinstance(value, list) else [value]) if t not in types]
    return types


def _schema_error_findings(doc: Document, error: ValidationError) -> Iterator[Finding]:
    where = pointer(*error.absolute_path)
    keys = _alternative_keys(error)
    if keys and isinstance(error.instance, Mapping):
        given = [k for k in keys if k in error.instance]
        listed = " or ".join(repr(k) for k in keys)
        if given:
            yield doc.finding(where, f"give only one of {listed}, not {' and '.join(repr(k) for k in given)}",
                              "dsl-oneOf", key=True)
        else:
            yield doc.finding(where, f"missing required key: one of {listed}", "dsl-missing-key", key=True)
        return
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        allowed = list(error.schema.get("properties", {}))
        for extra in error.instance:
            if extra not in allowed:
                hint = (_cut_text(extra, error.instance[extra]) or did_you_mean(extra, allowed)
                        or f"; expected one of {one_of(allowed)}")
                yield doc.finding(
                    where + pointer(extra),
                    f"unknown key {extra!r}{hint}",
                    "dsl-unknown-key", key=True,
                )
        return
    if error.validator == "required" and isinstance(error.instance, Mapping):
        for key in error.validator_value:  # jsonschema reports one missing key per error
            if key not in error.instance and error.message == f"{key!r} is a required property":
                yield doc.finding(where, f"missing required key {key!r}", "dsl-missing-key", key=True)
        return
    if error.validator == "uniqueItems" and isinstance(error.instance, list):
        seen: list[Any] = []
        for i, item in enumerate(error.instance):
            if item in seen:
                yield doc.finding(where + pointer(i), f"{_describe(item)} is listed more than once", "dsl-uniqueItems")
                return
            seen.append(item)
    if error.validator == "pattern" and error.schema.get("pattern") == HEADER_NAME_PATTERN:
        yield doc.finding(where + pointer(error.instance), f"{error.instance!r} is not a NATS header name: use "
                          "printable ASCII without spaces or ':'", "dsl-header", key=True)
        return
    if error.validator == "pattern" and error.schema.get("pattern") == NO_LINE_BREAK_PATTERN:
        yield doc.finding(where, "a NATS header value cannot hold a line break", "dsl-header")
        return
    if error.validator == "pattern" and "propertyNames" in error.absolute_schema_path:
        yield doc.finding(
            where + pointer(error.instance),
            f"{error.instance!r} is not a valid name: use letters, digits, '_' and '-', "
            "starting with a letter or '_'",
            "dsl-name", key=True,
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
    yield doc.finding(where, schema_error_message(error), f"dsl-{_rule_name(error)}")


def _rule_name(error: ValidationError) -> str:
    return "type" if error.validator in ("oneOf", "anyOf") and _union_types(error) else str(error.validator)


def schema_error_message(error: ValidationError) -> str:
    """A sentence for one (explained) JSON Schema error: the bad value, what was expected."""
    kind, value = error.validator, error.validator_value
    if kind == "type" or (kind in ("oneOf", "anyOf") and _union_types(error)):
        if kind == "type":
            types = value if isinstance(value, list) else [value]
        else:
            types = _union_types(error)
        return f"expected {' or '.join(_article(t) for t in types)}, got {_describe(error.instance)}"
    if kind == "enum" and isinstance(value, list):
        names = [str(v) for v in value]
        hint = did_you_mean(error.instance, names) if isinstance(error.instance, str) else ""
        return f"{_describe(error.instance)} is not one of {', '.join(repr(v) for v in value)}{hint}"
    if kind in ("minProperties", "minItems") and not error.instance:
        what = "entry" if kind == "minProperties" else "item"
        return f"expected at least {value} {what}{'' if value == 1 else 's'}, got none"
    return error.message


def _cut_text(key: str, value: Any) -> str:
    """A hint for 'description: a, b' in a {flow} mapping, which YAML reads as a key 'b' without a value."""
    if value is None and " " in key.strip():
        return "; is it the end of a text cut at an unquoted ','? Quote the text"
    return ""


def _article(kind: str) -> str:
    return {"object": "a mapping", "array": "a list", "null": "nothing (null)", "boolean": "true or false",
            "integer": "an integer", "string": "a string", "number": "a number"}.get(kind, repr(kind))


def _describe(value: Any, limit: int = 60) -> str:
    """The value as the author wrote it: scalars by repr (shortened), containers by kind."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    if isinstance(value, (Mapping, list)):
        kind = "mapping" if isinstance(value, Mapping) else "list"
        return f"the {kind} {text}" if len(text) <= limit else f"a {kind}"
    return text if len(text) <= limit else text[:limit] + "..."


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


def _item(ctx: Context, ptr: str) -> str:
    """ptr ('.../from/0'), or its parent when the list was written as one string ('from: open')."""
    return ptr if ptr in ctx.doc.positions else ptr.rsplit("/", 1)[0]


@rule
def unknown_states(ctx: Context) -> Iterator[Finding]:
    states = ctx.aggregate.states
    for ptr, name in _state_refs(ctx.aggregate):
        if name not in states:
            hint = did_you_mean(name, states) or f"; expected one of {one_of(states)}"
            yield ctx.error(_item(ctx, ptr), f"{name!r} is not a declared state{hint}", "unknown-state")


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
        for i, source in enumerate(event.sources):
            if source in states and states[source].final:
                yield ctx.error(_item(ctx, f"{event.where}/from/{i}"),
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
        if not source.strip():
            yield ctx.error(ptr, f"{source!r} is not a CEL expression: a string in a template is CEL; "
                            "write '\"\"' for an empty string", "cel-syntax")
            continue
        problem = syntax_error(source)
        if problem:
            yield ctx.error(ptr, f"CEL syntax error in {source!r}: {_cel_problem(problem)}", "cel-syntax")
            continue
        for name in unknown_functions(source):
            yield ctx.error(ptr, f"unknown CEL function {name!r} in {source!r}"
                            f"{did_you_mean(name, FUNCTIONS) or ''}; available: {', '.join(sorted(FUNCTIONS))}",
                            "cel-unknown-function")
        for name in sorted(free_variables(source) - allowed):
            if name == "now" and allowed is APPLY_VARIABLES:
                yield ctx.error(ptr, "'now' cannot be used in 'apply': replaying events must give the same data every time; "
                                "put the time in the event data instead", "now-in-apply")
            else:
                yield ctx.error(ptr, f"unknown variable {name!r} in {source!r}"
                                f"{did_you_mean(name, allowed) or f'; expected one of {one_of(allowed)}'}",
                                "cel-unknown-variable")
        schemas = {
            "cmd": command.schema if command else None,
            "data": agg.data_schema,
            "event": event.schema if event else None,
        }
        extra = {"data": set(agg.initial_data)}
        for var, field in field_references(source):
            if var not in allowed:
                continue  # reported above as an unknown variable
            declared = _declared(schemas.get(var))
            if declared is None or field in declared or field in extra.get(var, ()):
                continue
            known = declared | extra.get(var, set())
            what = {"cmd": f"command {command.name!r}" if command else "", "data": "the aggregate's data",
                    "event": f"event {event.name!r}" if event else ""}[var]
            yield ctx.error(ptr, f"{var}.{field}: {what} declares no field {field!r}"
                            f"{did_you_mean(field, known) or f'; expected one of {one_of(known)}'}",
                            "cel-unknown-field")


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


@rule
def bounded_comprehensions(ctx: Context) -> Iterator[Finding]:
    """CEL has no cost limit here, and its map/filter take time growing with the square of the
    list: a comprehension must iterate over a list whose schema bounds it, and never nest."""
    agg = ctx.aggregate
    unbounded: dict[str, tuple[str, list[str]]] = {}  # schema pointer -> (list path, expressions)
    for ptr, source, allowed, command, event in _expressions(agg):
        if not source.strip() or syntax_error(source):
            continue
        roots = {"cmd": (command.schema if command else None, f"{command.where}/schema" if command else ""),
                 "data": (agg.data_schema, "/data"),
                 "event": (event.schema if event else None, f"{event.where}/schema" if event else "")}
        for c in comprehensions(source):
            if c.nested:
                yield ctx.error(ptr, f"a comprehension ({c.macro}) inside another in {source!r}: its cost is the "
                                "product of the list sizes; flatten it, or keep a derived field up to date in 'apply'",
                                "cel-unbounded")
                continue
            if c.receiver is None:
                continue  # a literal list, or the result of a bounded comprehension
            var, *fields = c.receiver.split(".")
            if var == "cmd" and command is None:
                yield ctx.error(ptr, f"{c.receiver}.{c.macro}(…) in an authorize rule: authorize runs before the "
                                "payload is checked against a schema, so nothing bounds that list; iterate over "
                                "it in the command's own rules", "cel-unbounded")
                continue
            if var not in roots or roots[var][0] is None or not fields:
                continue  # a comprehension variable (nested, reported above) or an unknown name
            schema, where = _schema_at(roots[var][0], fields)
            bound = schema.get("maxItems") if isinstance(schema, Mapping) else None
            if not (isinstance(bound, int) and bound <= MAX_ITEMS):
                unbounded.setdefault(f"{roots[var][1]}{where}", (c.receiver, []))[1].append(ptr)
    for at, (path, users) in sorted(unbounded.items()):
        yield ctx.error(at, f"{path} is iterated by a comprehension (at {users[0]}"
                        f"{f' and {len(users) - 1} more' if len(users) > 1 else ''}) but its schema sets no "
                        f"'maxItems' of at most {MAX_ITEMS}: CEL's map and filter take time growing with the "
                        "square of the list's length", "cel-unbounded")


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
                        yield ctx.doc.finding(
                            f"{emit.where}/data" + pointer(field),
                            f"event {event.name!r} declares no field {field!r}"
                            f"{did_you_mean(field, declared) or f'; expected one of {one_of(declared)}'}",
                            "emit-unknown-field", key=True,
                        )
            required = event.schema.get("required", []) if isinstance(event.schema, Mapping) else []
            if not isinstance(required, list):
                continue  # reported by json_schemas
            for field in required:
                if isinstance(field, str) and field not in emit.data:
                    has_data = f"{emit.where}/data" in ctx.doc.positions
                    yield ctx.error(f"{emit.where}/data" if has_data else emit.where,
                                    f"event {event.name!r} requires field {field!r}, which this emit does not set",
                                    "emit-missing-field")


@rule
def template_shapes(ctx: Context) -> Iterator[Finding]:
    """Event data and 'apply' must give a mapping: write one, or one CEL expression that gives a map."""
    places = [(f"{e.where}/data", e.data) for c in ctx.aggregate.commands.values() for e in c.emits]
    places += [(f"{e.where}/apply", e.apply) for e in ctx.aggregate.events.values()]
    for ptr, template in places:
        if ptr in ctx.doc.positions and not isinstance(template, (Mapping, str)):
            yield ctx.error(ptr, f"expected a mapping of field to CEL expression, or one CEL expression giving a map; "
                            f"got {_describe(template)}", "template-shape")


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
                    yield ctx.doc.finding(
                        f"{event.where}/apply" + pointer(field),
                        f"the aggregate's data declares no field {field!r}"
                        f"{did_you_mean(field, declared) or f'; expected one of {one_of(declared)}'}",
                        "apply-unknown-field", key=True,
                    )


_META_VALIDATOR = Draft202012Validator(Draft202012Validator.META_SCHEMA,
                                      format_checker=Draft202012Validator.FORMAT_CHECKER)  # checks 'pattern' regexes
_SUBSCHEMA = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames",
              "unevaluatedItems", "unevaluatedProperties", "contentSchema")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_ANNOTATIONS = ("$schema", "$id", "$anchor", "$dynamicAnchor", "$comment", "$vocabulary", "title", "description",
                "default", "examples", "deprecated", "readOnly", "writeOnly", "contentEncoding", "contentMediaType",
                "then", "else", "maxContains", "minContains", "$defs", "definitions", "contentSchema")
JSON_SCHEMA_KEYWORDS = frozenset(Draft202012Validator.VALIDATORS) | frozenset(_ANNOTATIONS)


def _schemas(ctx: Context) -> list[tuple[str, Any]]:
    """(pointer, schema) of every JSON Schema the definition writes (defaults are not written)."""
    agg = ctx.aggregate
    places = [("/data", agg.data_schema)]
    places += [(f"{c.where}/schema", c.schema) for c in agg.commands.values()]
    places += [(f"{e.where}/schema", e.schema) for e in agg.events.values()]
    return [(ptr, schema) for ptr, schema in places if ptr in ctx.doc.positions]


def _subschemas(schema: Any, ptr: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(pointer, mapping) of a schema and every schema nested in it."""
    if not isinstance(schema, Mapping):
        return
    yield ptr, schema
    for key, value in schema.items():
        if key in _SUBSCHEMA:
            yield from _subschemas(value, ptr + pointer(key))
        elif key in _SUBSCHEMA_MAPS and isinstance(value, Mapping):
            for name, sub in value.items():
                yield from _subschemas(sub, ptr + pointer(key, name))
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            for i, sub in enumerate(value):
                yield from _subschemas(sub, ptr + pointer(key, i))


@rule
def json_schemas(ctx: Context) -> Iterator[Finding]:
    for ptr, schema in _schemas(ctx):
        for error in _META_VALIDATOR.iter_errors(schema):
            for leaf in _explain(error):
                message = schema_error_message(leaf)
                if leaf.validator == "format" and leaf.validator_value == "regex":
                    message = f"{leaf.instance!r} is not a valid regular expression"
                yield ctx.error(ptr + pointer(*leaf.absolute_path), f"not a valid JSON Schema: {message}",
                                "invalid-json-schema")


@rule
def json_schema_refs(ctx: Context) -> Iterator[Finding]:
    """A '$ref' inside the definition's own schema must point somewhere (else validation crashes at run time)."""
    for ptr, schema in _schemas(ctx):
        if not isinstance(schema, Mapping):
            continue
        resolver = Registry().resolver_with_root(DRAFT202012.create_resource(schema))
        for where, sub in _subschemas(schema, ptr):
            ref = sub.get("$ref")
            if not isinstance(ref, str) or not ref.startswith("#"):
                continue
            try:
                resolver.lookup(ref)
            except Unresolvable:
                named = schema.get("$defs")
                defs = [f"#/$defs/{name}" for name in named] if isinstance(named, Mapping) else []
                yield ctx.error(f"{where}/$ref", f"$ref {ref!r} points to nothing in this schema"
                                f"{did_you_mean(ref, defs) or (f'; expected one of {one_of(defs)}' if defs else '')}",
                                "invalid-json-schema")


@rule
def json_schema_keywords(ctx: Context) -> Iterator[Finding]:
    """An unknown keyword is ignored by JSON Schema, so a misspelt one silently checks nothing."""
    for ptr, schema in _schemas(ctx):
        for where, sub in _subschemas(schema, ptr):
            for key, value in sub.items():
                if key not in JSON_SCHEMA_KEYWORDS and not key.startswith("x-"):
                    hint = (_cut_text(key, value) or did_you_mean(key, JSON_SCHEMA_KEYWORDS)
                            or "; prefix a custom annotation with 'x-'")
                    yield ctx.doc.finding(
                        where + pointer(key),
                        f"unknown JSON Schema keyword {key!r}, ignored when validating{hint}",
                        "json-schema-keyword", "warning", key=True,
                    )


@rule
def initial_data(ctx: Context) -> Iterator[Finding]:
    agg = ctx.aggregate
    if "/initial_data" not in ctx.doc.positions:
        return
    try:
        Draft202012Validator.check_schema(agg.data_schema)  # else its errors are about the schema, not the data
        validator = Draft202012Validator(agg.data_schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
        errors = list(validator.iter_errors(dict(agg.initial_data)))
    except Exception:  # an invalid data schema is reported by json_schemas / json_schema_refs
        return
    for error in errors:
        for leaf in _explain(error):
            yield ctx.error("/initial_data" + pointer(*leaf.absolute_path),
                            f"initial data does not match the data schema: {schema_error_message(leaf)}",
                            "initial-data")


@rule
def nats_names(ctx: Context) -> Iterator[Finding]:
    nats = ctx.aggregate.nats
    default = m.NatsNames.defaults(ctx.aggregate.name, {})
    for field in ("commands", "events"):
        value = getattr(nats, field)
        if not all(SUBJECT_TOKEN.fullmatch(t) for t in value.split(".")):
            yield ctx.error(f"/nats/{field}",
                            f"{value!r} is not a valid subject prefix: expected tokens separated by '.', none empty, "
                            f"without spaces or wildcards ('*', '>'), such as {getattr(default, field)!r}",
                            "invalid-nats-name")
    if not STREAM_NAME.fullmatch(nats.stream):
        yield ctx.error("/nats/stream", f"{nats.stream!r} is not a valid stream name: expected no spaces, "
                        f"'.', '*', '>', '/' or '\\', such as {default.stream!r}", "invalid-nats-name")
    if not BUCKET_NAME.fullmatch(nats.bucket):
        yield ctx.error("/nats/bucket", f"{nats.bucket!r} is not a valid bucket name: expected letters, digits, "
                        f"'_' and '-' only, such as {default.bucket!r}", "invalid-nats-name")


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
    """Rules over all definitions at once: they share one NATS account."""
    yield from duplicate_names(contexts)
    yield from overlapping_subjects(contexts)


_NATS_NAMES = (
    ("commands", "commands subject"), ("events", "events subject"), ("stream", "stream"), ("bucket", "bucket"),
)


def _nats_where(ctx: Context, field: str) -> tuple[str, str]:
    """Pointer of nats.<field>, and a note when the name is not written but defaulted from the aggregate name."""
    ptr = f"/nats/{field}"
    if ptr in ctx.doc.positions:
        return ptr, ""
    return "/aggregate", f" (the default for aggregate {ctx.aggregate.name!r}; set 'nats.{field}' to choose another)"


def duplicate_names(contexts: list[Context]) -> Iterator[Finding]:
    owners: dict[str, Context] = {}
    for ctx in contexts:
        first = owners.setdefault(ctx.aggregate.name, ctx)
        if first is not ctx:
            yield ctx.error("/aggregate", f"aggregate {ctx.aggregate.name!r} is already defined in {first.doc.path}; "
                            "aggregate names must be unique", "duplicate-name")
    seen: dict[tuple[str, str], Context] = {}
    for ctx in contexts:
        for field, what in _NATS_NAMES:
            value = getattr(ctx.aggregate.nats, field)
            first = seen.setdefault((field, value), ctx)
            if first is ctx:
                continue
            ptr, note = _nats_where(ctx, field)
            if note and owners[ctx.aggregate.name] is not ctx:
                continue  # a default that clashes because the aggregate name does: reported above
            yield ctx.error(ptr, f"{what} {value!r}{note} is already used by aggregate {first.aggregate.name!r} "
                            f"in {first.doc.path}", "duplicate-name")


def overlapping_subjects(contexts: list[Context]) -> Iterator[Finding]:
    """An events stream captures '<events>.>': no other subject of any aggregate may fall inside it."""
    for ctx in contexts:
        for field, what in _NATS_NAMES[:2]:
            subject = getattr(ctx.aggregate.nats, field)
            for other in contexts:
                events = other.aggregate.nats.events
                if field == "events" and (other is ctx or subject == events):
                    continue  # one stream per aggregate; equal prefixes are a duplicate name
                if subject == events or subject.startswith(events + "."):
                    ptr, note = _nats_where(ctx, field)
                    whose = ("this aggregate's own events" if other is ctx
                             else f"the events of aggregate {other.aggregate.name!r} in {other.doc.path}")
                    yield ctx.error(ptr, f"{what} {subject!r}{note} lies inside {events + '.>'!r}, {whose}; "
                                    f"that stream would also capture these {field}", "overlapping-subjects")


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
