"""The Markdown page of an aggregate, and the index of all of them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from esfsm.authoring.diagram import mermaid
from esfsm.compiler import CompiledAggregate, CompiledRule
from esfsm.contract import command_subject, event_subject, stream_subjects
from esfsm.docgen.facts import (
    GENERATED,
    accepted_in,
    definition_path,
    durable_name,
    emitted_events,
    emitters,
    resulting_states,
)
from esfsm.model import Event

DEFAULT_SCHEMA = {"type": "object"}


# -- Markdown primitives ------------------------------------------------------


def code(text: str) -> str:
    """An inline code span holding text exactly (newlines become spaces)."""
    text = re.sub(r"\s*\n\s*", " ", str(text))
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _codes(names: Iterable[str]) -> str:
    return ", ".join(code(n) for n in names) or "—"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _cell(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text).replace("|", "\\|")


def table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def fenced(language: str, body: str) -> list[str]:
    """A fenced code block, its fence longer than any run of backticks in body."""
    fence = "```" + "`" * max((len(r) - 2 for r in re.findall(r"`{3,}", body)), default=0)
    return [fence + language, body, fence, ""]


def details(summary: str, language: str, body: str) -> list[str]:
    """A collapsed block (GitHub renders <details>) holding a fenced code block."""
    return [f"<details><summary>{summary}</summary>", "", *fenced(language, body), "</details>", ""]


def _schema_json(schema: Any) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False)


def command_anchor(name: str) -> str:
    return f"#command-{name.lower()}"


def event_anchor(name: str) -> str:
    return f"#event-{name.lower()}"


# -- JSON Schema as a table ------------------------------------------------------


def describe_type(schema: Any) -> str:
    """A short reading of a schema's type: ``string``, ``array of object``, ``integer or null``."""
    if not isinstance(schema, Mapping):
        return "any" if schema is not False else "nothing"
    if "$ref" in schema:
        return f"see {code(schema['$ref'])}"
    kind = schema.get("type")
    if isinstance(kind, list):
        return " or ".join(map(str, kind))
    if kind == "array" and isinstance(schema.get("items"), Mapping):
        return f"array of {describe_type(schema['items'])}"
    if kind:
        return str(kind)
    for combinator in ("oneOf", "anyOf"):
        if isinstance(schema.get(combinator), list):
            return " or ".join(dict.fromkeys(describe_type(s) for s in schema[combinator]))
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        return " or ".join(dict.fromkeys(_json_type(v) for v in values))
    return "any"


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object", type(None): "null"}[type(value)]


_BOUNDS = [
    ("minimum", "≥ {}"),
    ("exclusiveMinimum", "> {}"),
    ("maximum", "≤ {}"),
    ("exclusiveMaximum", "< {}"),
    ("multipleOf", "multiple of {}"),
    ("minLength", "length ≥ {}"),
    ("maxLength", "length ≤ {}"),
    ("minItems", "items ≥ {}"),
    ("maxItems", "items ≤ {}"),
    ("minProperties", "fields ≥ {}"),
    ("maxProperties", "fields ≤ {}"),
]


def describe_constraints(schema: Any) -> str:
    """The constraints of a schema as a short phrase: ``one of "low", "high"``, ``≥ 1``."""
    if not isinstance(schema, Mapping):
        return ""
    parts = []
    if "const" in schema:
        parts.append(f"= {code(_json(schema['const']))}")
    if isinstance(schema.get("enum"), list):
        parts.append("one of " + ", ".join(code(_json(v)) for v in schema["enum"]))
    parts += [text.format(schema[key]) for key, text in _BOUNDS if key in schema]
    if "pattern" in schema:
        parts.append(f"pattern {code(schema['pattern'])}")
    if "format" in schema:
        parts.append(f"format {code(schema['format'])}")
    if schema.get("uniqueItems") is True:
        parts.append("unique items")
    nested = schema.get("items") if schema.get("type") == "array" else schema
    if isinstance(nested, Mapping) and isinstance(nested.get("properties"), Mapping) and nested is not schema:
        parts.append("items with fields " + _codes(nested["properties"]))
    elif isinstance(schema.get("properties"), Mapping):
        parts.append("fields " + _codes(schema["properties"]))
    if "default" in schema:
        parts.append(f"default {code(_json(schema['default']))}")
    return "; ".join(parts)


def schema_section(schema: Any, empty: str) -> list[str]:
    """A table of the top-level fields of an object schema, a note on other fields,
    and the schema itself in a collapsed block."""
    if schema == DEFAULT_SCHEMA:
        return [empty, ""]
    lines: list[str] = []
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    if isinstance(properties, Mapping) and properties:
        required = set(schema.get("required") or [])
        lines += table(
            ["field", "type", "required", "constraints", "description"],
            [
                [
                    code(name),
                    describe_type(prop),
                    "yes" if name in required else "",
                    describe_constraints(prop),
                    str(prop.get("description", "")) if isinstance(prop, Mapping) else "",
                ]
                for name, prop in properties.items()
            ],
        )
        if schema.get("additionalProperties") is False:
            lines += ["No other field is allowed.", ""]
    else:
        lines += [
            f"Type: {describe_type(schema)}" + (f"; {c}" if (c := describe_constraints(schema)) else "") + ".",
            "",
        ]
    return lines + details("JSON Schema", "json", _schema_json(schema))


def template_text(template: Any) -> str:
    """An emit's data or an event's apply, for a table cell."""
    if isinstance(template, str):
        return code(template)
    if isinstance(template, Mapping):
        if not template:
            return code("{}")
        return "<br>".join(
            f"{code(k)}: {code(v) if isinstance(v, str) else code(_json(v))}" for k, v in template.items()
        )
    return code(_json(template))


# -- the page --------------------------------------------------------------------


def _header(compiled: CompiledAggregate) -> list[str]:
    model = compiled.model
    source = definition_path(compiled)
    return [
        f"<!-- {GENERATED} from {source}: do not edit, run `esfsm docs` again. -->",
        f"# {model.name}",
        "",
        *([model.description, ""] if model.description else []),
        (
            f"Definition: {code(source)} · AsyncAPI 3.0: [{model.name}.asyncapi.yaml]({model.name}.asyncapi.yaml)"
            " · [all aggregates](index.md)"
        ),
        "",
        (
            "Contents: [state machine](#state-machine) · [NATS names](#nats-names) · [states](#states) · "
            "[data](#data) · [authorize](#authorize) · [commands](#commands) · [events](#events)"
        ),
        "",
    ]


def _machine(compiled: CompiledAggregate) -> list[str]:
    return [
        "## State machine",
        "",
        (
            "Each event type is a transition, labelled with the commands that emit it; `[*]` marks the initial "
            "state and the final ones."
        ),
        "",
        "```mermaid",
        mermaid(compiled).rstrip("\n"),
        "```",
        "",
    ]


def _nats(compiled: CompiledAggregate) -> list[str]:
    model = compiled.model
    nats = model.nats
    return [
        "## NATS names",
        "",
        *table(
            ["what", "name"],
            [
                ["micro service", f"{code(model.service_name)}, queue group {code(model.name)}"],
                ["commands", f"requests to {code(command_subject(nats.commands, '<command>'))}"],
                ["events", f"CloudEvents on {code(event_subject(nats.events, '<key>', '<event>'))}"],
                ["stream", f"{code(nats.stream)}, subjects {code(stream_subjects(nats.events))}"],
                ["KV bucket", f"{code(nats.bucket)}, key = entity key"],
                ["durable consumer", code(durable_name(model.name))],
                ["replicas", str(nats.replicas)],
            ],
        ),
    ]


def _states(compiled: CompiledAggregate) -> list[str]:
    model = compiled.model
    rows = []
    for state in model.states.values():
        marks = [m for m, on in (("initial", state.name == model.initial), ("final", state.final)) if on]
        commands = [c for c in model.commands if state.name in compiled.commands[c].accepted_states]
        rows.append(
            [
                code(state.name),
                ", ".join(marks),
                state.description,
                ", ".join(f"[{code(c)}]({command_anchor(c)})" for c in commands) or "—",
            ]
        )
    return ["## States", "", *table(["state", "", "description", "commands accepted"], rows)]


def _data(compiled: CompiledAggregate) -> list[str]:
    model = compiled.model
    lines = ["## Data", "", "The JSON Schema of the entity's data, checked after every command.", ""]
    lines += schema_section(model.data_schema, "Any JSON object.")
    lines += [f"Initial data (an entity with no event): {code(_json(dict(model.initial_data)))}", ""]
    return lines


def _rule_rows(rules: Iterable[CompiledRule], check: str) -> list[list[str]]:
    return [[check, code(r.expression.source), r.message, str(r.code), code(r.path or '""')] for r in rules]


def _authorize(compiled: CompiledAggregate) -> list[str]:
    lines = ["## Authorize", ""]
    if not compiled.authorize:
        return [*lines, "No rule: every command goes straight to its own checks.", ""]
    lines += ["Every command must pass these rules first, in order, before its payload and state are checked.", ""]
    return lines + table(["check", "rule", "message", "code", "path"], _rule_rows(compiled.authorize, "authorize"))


def _commands(compiled: CompiledAggregate) -> list[str]:
    model = compiled.model
    lines = ["## Commands", ""]
    lines += table(
        ["command", "accepted in", "emits", "description"],
        [
            [
                f"[{code(name)}]({command_anchor(name)})",
                _codes(accepted_in(compiled, name)),
                ", ".join(f"[{code(e)}]({event_anchor(e)})" for e in emitted_events(compiled, name)),
                command.description,
            ]
            for name, command in model.commands.items()
        ],
    )
    for name, command in model.commands.items():
        lines += [f"### Command `{name}`", ""]
        if command.description:
            lines += [command.description, ""]
        narrowed = f" (narrowed by `in`: {_codes(command.in_states)})" if command.in_states is not None else ""
        lines += [
            f"- Subject: {code(f'{model.nats.commands}.{name}')}",
            f"- Accepted in: {_codes(accepted_in(compiled, name))}{narrowed}",
            f"- Leaves the entity in: {_codes(resulting_states(compiled, name))}",
            "",
            "#### Payload",
            "",
            *schema_section(command.schema, "Any JSON object."),
            "#### Checks",
            "",
            "In order; the first that fails rejects the command and nothing is written.",
            "",
        ]
        accepted = ", ".join(f"'{s}'" for s in accepted_in(compiled, name))
        rows = _rule_rows(compiled.authorize, "authorize")
        rows.append(
            ["payload", "valid against the payload schema", f"invalid {name} payload: …", "400", "each error's pointer"]
        )
        rows.append(
            [
                "state",
                f"the state is one of {accepted}",
                f"command '{name}' is not accepted in state '…'",
                "409",
                code('""'),
            ]
        )
        rows += _rule_rows(compiled.commands[name].rules, "rule")
        if model.data_schema != DEFAULT_SCHEMA:
            rows.append(
                [
                    "data",
                    "the data the events lead to is valid against the [data schema](#data)",
                    "the command would make the data invalid: …",
                    "422",
                    "each error's pointer into the data",
                ]
            )
        lines += table(["check", "rule", "message", "code", "path"], rows)
        lines += ["#### Emits", "", "In order; each is a transition from the state the previous one led to.", ""]
        lines += table(
            ["#", "event", "if", "data"],
            [
                [
                    str(i),
                    f"[{code(e.event)}]({event_anchor(e.event)})",
                    code(e.condition) if e.condition else "always",
                    template_text(e.data),
                ]
                for i, e in enumerate(command.emits, start=1)
            ],
        )
    return lines


def _events(compiled: CompiledAggregate) -> list[str]:
    model = compiled.model

    def moves(name: str) -> str:
        event = model.events[name]
        return ", ".join(f"{code(s)} → {code(event.dest or s)}" for s in model.source_states(event))

    lines = ["## Events", ""]
    lines += table(
        ["event", "version", "transitions", "emitted by", "description"],
        [
            [
                f"[{code(name)}]({event_anchor(name)})",
                str(event.version) + (" (retired)" if event.retired else ""),
                moves(name),
                ", ".join(f"[{code(c)}]({command_anchor(c)})" for c in emitters(compiled, name)) or "—",
                event.description,
            ]
            for name, event in model.events.items()
        ],
    )
    for name, event in model.events.items():
        lines += [f"### Event `{name}`", ""]
        if event.description:
            lines += [event.description, ""]
        lines += [
            (
                f"- Subject: {code(event_subject(model.nats.events, '<key>', name))}, type {code(name)}, "
                f"source {code(f'esfsm/{model.name}')}"
            ),
            f"- Version: {event.version} (the `eventversion` extension; an event without it is version 1)",
            *_evolution(event),
            f"- Transitions: {moves(name)}"
            + (" (`from` omitted: any non-final state)" if "*" in event.sources else ""),
            f"- Emitted by: {', '.join(f'[{code(c)}]({command_anchor(c)})' for c in emitters(compiled, name)) or '—'}",
            "",
            "#### Data",
            "",
            *schema_section(event.schema, "Any JSON object (`{}` when the emit gives no data)."),
            *_upcasts(event),
            "#### Apply",
            "",
        ]
        if isinstance(event.apply, Mapping):
            if event.apply:
                lines += ["Each field is evaluated on the data before the event, then merged into it.", ""]
                lines += table(
                    ["field", "expression"],
                    [[code(k), code(v) if isinstance(v, str) else code(_json(v))] for k, v in event.apply.items()],
                )
            else:
                lines += ["No change to the data.", ""]
        else:
            lines += [
                "One expression giving the map merged into the data:",
                "",
                *fenced("", str(event.apply).rstrip("\n")),
            ]
    return lines


def _evolution(event: Event) -> list[str]:
    """The lines that say how stored events of other names reach this one, and whether it is retired."""
    lines = []
    if event.formerly:
        names = ", ".join(code(n) for n in event.formerly)
        lines.append(f"- Formerly: {names} (stored events of those types, on their own subjects, are read as this one)")
    if event.retired:
        lines.append("- Retired: no command emits it any more; the events already stored still replay")
    return lines


def _upcasts(event: Event) -> list[str]:
    """How stored events of older versions become the current one, step by step."""
    if not event.upcasts:
        return []
    lines = ["#### Upcast", "", "Stored events of older versions are read through these steps, in order.", ""]
    rows = []
    for step in event.upcasts:
        if isinstance(step.data, Mapping):
            data = ", ".join(
                f"{code(k)}: {code(v) if isinstance(v, str) else code(_json(v))}" for k, v in step.data.items()
            )
        else:
            data = f"the whole data: {code(str(step.data))}"
        drop = ", ".join(code(f) for f in step.drop)
        rows.append([f"{step.version} → {step.version + 1}", data or "unchanged", drop or "—"])
    return lines + table(["version", "data set", "fields dropped"], rows)


def aggregate_page(compiled: CompiledAggregate) -> str:
    lines = [
        *_header(compiled),
        *_machine(compiled),
        *_nats(compiled),
        *_states(compiled),
        *_data(compiled),
        *_authorize(compiled),
        *_commands(compiled),
        *_events(compiled),
    ]
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


def index_page(aggregates: Iterable[CompiledAggregate]) -> str:
    ordered = sorted(aggregates, key=lambda c: c.name)
    sources = ", ".join(code(definition_path(c)) for c in ordered)
    lines = [
        f"<!-- {GENERATED}: do not edit, run `esfsm docs` again. -->",
        "# Aggregates",
        "",
        f"One page and one AsyncAPI 3.0 document per aggregate, generated from {sources}.",
        "",
        *table(
            ["aggregate", "description", "service", "commands", "events", "AsyncAPI"],
            [
                [
                    f"[{c.name}]({c.name}.md)",
                    c.model.description,
                    code(c.model.service_name),
                    str(len(c.model.commands)),
                    str(len(c.model.events)),
                    f"[{c.name}.asyncapi.yaml]({c.name}.asyncapi.yaml)",
                ]
                for c in ordered
            ],
        ),
    ]
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"
