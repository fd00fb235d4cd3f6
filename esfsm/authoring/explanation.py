"""Explain one command: where it is accepted, what it checks, what it emits, where it leads.

:func:`explain` gathers the facts as plain JSON data (``esfsm explain
--format json``); :func:`render_text` writes the same facts for people, in the
order a command is decided (docs/dsl.md, "How a command is decided").
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping
from typing import Any

from esfsm.authoring.analysis import Step, accepted_states, command_paths, command_steps, count_paths, states_without_in
from esfsm.compiler import CompiledAggregate

WIDTH = 88

# The paths an explanation lists at most: each conditional emit can double them, and past a
# few dozen they no longer explain anything. The rest are counted ("… and N more paths").
MAX_PATHS = 32

# Schema keywords the field summary spells out; any other keyword is named as "see the schema".
_CONSTRAINTS = (
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "default",
)
_SUMMARISED = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "description",
        "title",
        "$schema",
        "$id",
        "$comment",
        "examples",
    }
)


def explain(aggregate: CompiledAggregate, command: str) -> dict[str, Any]:
    """Everything a reader needs to know about one command, as JSON-ready data."""
    compiled = aggregate.commands[command]
    model = compiled.model
    paths = command_paths(aggregate, command, MAX_PATHS)
    steps = command_steps(aggregate, command)
    return {
        "aggregate": aggregate.name,
        "command": command,
        "description": model.description,
        "file": aggregate.model.file,
        "accepted_in": accepted_states(aggregate, command),
        "in": list(model.in_states) if model.in_states is not None else None,
        "without_in": states_without_in(aggregate, command),
        "authorize": [_rule(r) for r in aggregate.authorize],
        "payload": payload_summary(model.schema),
        "rules": [_rule(r) for r in compiled.rules],
        "emits": [
            {
                "event": emit.event,
                "if": emit.condition,
                "data": emit.data,
                "transitions": _transitions(steps, i),
            }
            for i, emit in enumerate(model.emits)
        ],
        "paths": [
            {
                "from": p.start,
                "to": p.end,
                "final": aggregate.model.states[p.end].final,
                "steps": [{"event": s.event, "from": s.source, "to": s.dest} for s in p.steps],
            }
            for p in paths
        ],
        "paths_not_shown": count_paths(aggregate, command) - len(paths),
    }


def _rule(rule: Any) -> dict[str, Any]:
    return {"rule": rule.expression.source, "message": rule.message, "code": rule.code, "path": rule.path}


def _transitions(steps: list[Step], emit: int) -> list[dict[str, str]]:
    """Where the emit can fire: its (from, to) pairs over every path, first seen first."""
    seen: list[dict[str, str]] = []
    for step in (s for s in steps if s.emit == emit):
        pair = {"from": step.source, "to": step.dest}
        if pair not in seen:
            seen.append(pair)
    return seen


def payload_summary(schema: Any) -> dict[str, Any]:
    """The payload schema's top-level fields: type, required, constraints, description."""
    if not isinstance(schema, Mapping):
        return {"fields": [], "additional": True, "other_keywords": [], "schema": schema}
    properties = schema.get("properties", {})
    required = list(schema.get("required", []))
    fields = [_field(name, spec, name in required) for name, spec in properties.items()]
    fields += [_field(name, {}, True) for name in required if name not in properties]
    additional = schema.get("additionalProperties", True)
    return {
        "fields": fields,
        "additional": additional is not False,
        "other_keywords": [k for k in schema if k not in _SUMMARISED],
        "schema": schema,
    }


def _field(name: str, spec: Any, required: bool) -> dict[str, Any]:
    spec = spec if isinstance(spec, Mapping) else {}
    constraints = {k: spec[k] for k in _CONSTRAINTS if k in spec}
    return {
        "name": name,
        "type": _type(spec),
        "required": required,
        "constraints": constraints,
        "description": spec.get("description", ""),
    }


def _type(spec: Mapping[str, Any]) -> str:
    if "const" in spec:
        return f"exactly {_value(spec['const'])}"
    if "enum" in spec:
        return "one of " + ", ".join(_value(v) for v in spec["enum"])
    if "$ref" in spec:
        return f"see {spec['$ref']}"
    kind = spec.get("type")
    if kind is None:
        return "any" if not any(k in spec for k in ("anyOf", "oneOf", "allOf")) else "see the schema"
    text = " or ".join(kind) if isinstance(kind, list) else str(kind)
    items = spec.get("items")
    if text == "array" and isinstance(items, Mapping):
        text = f"array of {_type(items)}"
    return text


def _oneline(text: str) -> str:
    """An expression or sentence on one line (YAML block scalars keep their line breaks)."""
    return " ".join(text.split())


def _value(value: Any) -> str:
    return repr(value) if isinstance(value, str) else json.dumps(value)


# -- text ----------------------------------------------------------------------


def render_text(facts: Mapping[str, Any]) -> str:
    """The explanation for people: one section per stage of deciding the command."""
    out = [f"Command {facts['command']} of aggregate {facts['aggregate']} ({facts['file']})"]
    if facts["description"]:
        out.append(textwrap.fill(_oneline(facts["description"]), WIDTH, initial_indent="  ", subsequent_indent="  "))
    out += ["", *_states_section(facts)]
    if facts["authorize"]:
        out += ["", "Authorize (every command of the aggregate, checked first):", *_rules_lines(facts["authorize"])]
    out += ["", "Payload (else 400):", *_payload_lines(facts["payload"])]
    if facts["rules"]:
        out += ["", "Rules, in order:", *_rules_lines(facts["rules"])]
    out += ["", "Emits, in order:", *_emit_lines(facts["emits"])]
    out += ["", "Leads to:", *_path_lines(facts["paths"], facts["paths_not_shown"])]
    return "\n".join(out) + "\n"


def _states_section(facts: Mapping[str, Any]) -> list[str]:
    lines = [f"Accepted in: {', '.join(facts['accepted_in'])} (else 409)"]
    if facts["in"] is None:
        return lines
    lines.append(f"  'in' lists: {', '.join(facts['in'])}")
    dropped = [s for s in facts["without_in"] if s not in facts["accepted_in"]]
    if dropped:
        lines.append(f"  without 'in', its events would also allow: {', '.join(dropped)}")
    invalid = [s for s in facts["in"] if s not in facts["accepted_in"]]
    if invalid:
        lines.append(f"  its events are not valid in: {', '.join(invalid)}")
    return lines


def _rules_lines(rules: list[Mapping[str, Any]]) -> list[str]:
    lines = []
    for rule in rules:
        where = f" [{rule['path']}]" if rule["path"] else ""
        lines += [f"  {_oneline(rule['rule'])}", f"    else {rule['code']}: {rule['message']}{where}"]
    return lines


def _payload_lines(payload: Mapping[str, Any]) -> list[str]:
    fields = payload["fields"]
    if not fields and payload["additional"] and not payload["other_keywords"]:
        return ["  any object"]
    width = max((len(f["name"]) for f in fields), default=0)
    lines = []
    for field in fields:
        parts = [field["type"], "required" if field["required"] else "optional"]
        parts += [f"{k} {_value(v)}" for k, v in field["constraints"].items()]
        text = ", ".join(parts) + (f" ({field['description']})" if field["description"] else "")
        lines.append(f"  {field['name'].ljust(width)}  {text}")
    if not payload["additional"]:
        lines.append("  no other field allowed")
    if payload["other_keywords"]:
        lines.append(f"  also checks {', '.join(payload['other_keywords'])} (see the schema)")
    return lines


def _emit_lines(emits: list[Mapping[str, Any]]) -> list[str]:
    lines = []
    for emit in emits:
        lines.append(f"  {emit['event']}" + (f", if {_oneline(emit['if'])}" if emit["if"] else ""))
        if emit["data"] not in ({}, None):
            lines.append(f"    data: {template_text(emit['data'])}")
        moves = ", ".join(f"{t['from']} → {t['to']}" for t in emit["transitions"])
        lines.append(f"    {moves or 'never fires (no accepted state lets it)'}")
    return lines


def _path_lines(paths: list[Mapping[str, Any]], not_shown: int = 0) -> list[str]:
    lines = []
    for path in paths:
        if not path["steps"]:
            lines.append(f"  {path['from']}: no event, when no condition holds")
            continue
        chain = "".join(f" --{s['event']}--> {s['to']}" for s in path["steps"])
        lines.append(f"  {path['from']}{chain}" + (" (final)" if path["final"] else ""))
    if not_shown:
        lines.append(f"  … and {not_shown} more path{'s' if not_shown != 1 else ''} not shown")
    return lines


def template_text(template: Any) -> str:
    """A template as written: expressions bare, literals as JSON, mappings as {k: v, …}."""
    if isinstance(template, str):
        return _oneline(template)
    if isinstance(template, Mapping):
        return "{" + ", ".join(f"{k}: {template_text(v)}" for k, v in template.items()) + "}"
    if isinstance(template, list):
        return "[" + ", ".join(template_text(v) for v in template) + "]"
    return json.dumps(template)
