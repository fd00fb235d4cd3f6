"""The JSON Schemas a definition writes (data, commands, events) and its initial data against them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from esfsm.checks.context import Context, Rule
from esfsm.checks.schema_errors import cut_text, explain, schema_error_message
from esfsm.findings import Finding, did_you_mean, one_of, pointer


def declared_fields(schema: Any) -> set[str] | None:
    """Field names a schema declares, or None when it does not constrain them."""
    if not isinstance(schema, Mapping) or not isinstance(schema.get("properties"), Mapping):
        return None
    return set(schema["properties"])


_META_VALIDATOR = Draft202012Validator(
    Draft202012Validator.META_SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER
)  # checks 'pattern' regexes
_SUBSCHEMA = (
    "items",
    "additionalProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contentSchema",
)
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_ANNOTATIONS = (
    "$schema",
    "$id",
    "$anchor",
    "$dynamicAnchor",
    "$comment",
    "$vocabulary",
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
    "contentEncoding",
    "contentMediaType",
    "then",
    "else",
    "maxContains",
    "minContains",
    "$defs",
    "definitions",
    "contentSchema",
)
JSON_SCHEMA_KEYWORDS = frozenset(Draft202012Validator.VALIDATORS) | frozenset(_ANNOTATIONS)


def written_schemas(ctx: Context) -> list[tuple[str, Any]]:
    """(pointer, schema) of every JSON Schema the definition writes (defaults are not written)."""
    agg = ctx.aggregate
    places = [("/data", agg.data_schema)]
    places += [(f"{c.where}/schema", c.schema) for c in agg.commands.values()]
    places += [(f"{e.where}/schema", e.schema) for e in agg.events.values()]
    return [(ptr, schema) for ptr, schema in places if ptr in ctx.doc.positions]


def subschemas(schema: Any, ptr: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(pointer, mapping) of a schema and every schema nested in it."""
    if not isinstance(schema, Mapping):
        return
    yield ptr, schema
    for key, value in schema.items():
        if key in _SUBSCHEMA:
            yield from subschemas(value, ptr + pointer(key))
        elif key in _SUBSCHEMA_MAPS and isinstance(value, Mapping):
            for name, sub in value.items():
                yield from subschemas(sub, ptr + pointer(key, name))
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            for i, sub in enumerate(value):
                yield from subschemas(sub, ptr + pointer(key, i))


def json_schemas(ctx: Context) -> Iterator[Finding]:
    for ptr, schema in written_schemas(ctx):
        nulls = dict(_unquoted_null_types(schema, ptr))
        for where in nulls.values():
            yield ctx.error(
                where,
                "not a valid JSON Schema: YAML reads an unquoted null as nothing, not as the "
                "type name; quote it: 'null'",
                "invalid-json-schema",
            )
        for error in _META_VALIDATOR.iter_errors(schema):
            for leaf in explain(error):
                at = ptr + pointer(*leaf.absolute_path)
                if any(at == t or at.startswith(t + "/") for t in nulls):
                    continue  # explained above
                message = schema_error_message(leaf)
                if leaf.validator == "format" and leaf.validator_value == "regex":
                    message = f"{leaf.instance!r} is not a valid regular expression"
                yield ctx.error(at, f"not a valid JSON Schema: {message}", "invalid-json-schema")


def _unquoted_null_types(schema: Any, ptr: str) -> Iterator[tuple[str, str]]:
    """(pointer of 'type', pointer of the null) where a type list holds null, or type is null, as YAML read it."""
    for where, sub in subschemas(schema, ptr):
        if "type" not in sub:
            continue
        kinds = sub["type"]
        if kinds is None:
            yield f"{where}/type", f"{where}/type"
        elif isinstance(kinds, list) and None in kinds:
            yield f"{where}/type", f"{where}/type/{kinds.index(None)}"


def json_schema_refs(ctx: Context) -> Iterator[Finding]:
    """A '$ref' inside the definition's own schema must point somewhere (else validation crashes at run time)."""
    for ptr, schema in written_schemas(ctx):
        if not isinstance(schema, Mapping):
            continue
        resolver = Registry().resolver_with_root(DRAFT202012.create_resource(schema))
        for where, sub in subschemas(schema, ptr):
            ref = sub.get("$ref")
            if not isinstance(ref, str) or not ref.startswith("#"):
                continue
            try:
                resolver.lookup(ref)
            except Unresolvable:
                named = schema.get("$defs")
                defs = [f"#/$defs/{name}" for name in named] if isinstance(named, Mapping) else []
                yield ctx.error(
                    f"{where}/$ref",
                    f"$ref {ref!r} points to nothing in this schema"
                    f"{did_you_mean(ref, defs) or (f'; expected one of {one_of(defs)}' if defs else '')}",
                    "invalid-json-schema",
                )


def json_schema_keywords(ctx: Context) -> Iterator[Finding]:
    """An unknown keyword is ignored by JSON Schema, so a misspelt one silently checks nothing."""
    for ptr, schema in written_schemas(ctx):
        for where, sub in subschemas(schema, ptr):
            for key, value in sub.items():
                if key not in JSON_SCHEMA_KEYWORDS and not key.startswith("x-"):
                    hint = (
                        cut_text(key, value)
                        or did_you_mean(key, JSON_SCHEMA_KEYWORDS)
                        or "; prefix a custom annotation with 'x-'"
                    )
                    yield ctx.doc.finding(
                        where + pointer(key),
                        f"unknown JSON Schema keyword {key!r}, ignored when validating{hint}",
                        "json-schema-keyword",
                        "warning",
                        key=True,
                    )


def initial_data(ctx: Context) -> Iterator[Finding]:
    agg = ctx.aggregate
    if "/initial_data" not in ctx.doc.positions:
        return
    try:
        Draft202012Validator.check_schema(agg.data_schema)  # else its errors are about the schema, not the data
        validator = Draft202012Validator(agg.data_schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
        errors = list(validator.iter_errors(dict(agg.initial_data)))
    except Exception:  # noqa: BLE001 - an invalid data schema is reported by json_schemas / json_schema_refs
        return
    for error in errors:
        for leaf in explain(error):
            yield ctx.error(
                "/initial_data" + pointer(*leaf.absolute_path),
                f"initial data does not match the data schema: {schema_error_message(leaf)}",
                "initial-data",
            )


RULES: tuple[Rule, ...] = (json_schemas, json_schema_refs, json_schema_keywords, initial_data)
