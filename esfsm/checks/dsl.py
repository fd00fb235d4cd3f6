"""The definition against the DSL's own JSON Schema (schemas/aggregate.schema.json)."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from esfsm.checks.schema_errors import (
    alternative_keys,
    cut_text,
    describe,
    explain,
    schema_error_message,
    union_types,
)
from esfsm.findings import Finding, did_you_mean, one_of, pointer
from esfsm.loader import Document
from esfsm.values import HEADER_NAME

# The JSON Schemas of the DSL live in the repository's schemas/; esfsm/schemas links
# there, so a wheel carries them inside the package. Where the link is not a folder
# (a checkout without symlinks), the repository's own is used.
_PACKAGE = Path(__file__).resolve().parent.parent
SCHEMA_DIR = (_PACKAGE / "schemas").resolve()
if not SCHEMA_DIR.is_dir():
    SCHEMA_DIR = _PACKAGE.parent / "schemas"


@functools.cache
def dsl_schema(name: str = "aggregate") -> dict[str, Any]:
    with open(SCHEMA_DIR / f"{name}.schema.json", encoding="utf-8") as handle:
        schema: dict[str, Any] = json.load(handle)
    return schema


@functools.cache
def _dsl_validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(dsl_schema(name))


HEADER_NAME_PATTERN = f"^{HEADER_NAME.pattern}$"  # scenarios.schema.json: header names and values NATS can carry
NO_LINE_BREAK_PATTERN = "^[^\\r\\n]*$"


def schema_findings(doc: Document, schema: str = "aggregate") -> list[Finding]:
    """The document against the DSL's JSON Schema, one finding per error."""
    findings: list[Finding] = []
    for error in _dsl_validator(schema).iter_errors(doc.data):
        for leaf in explain(error):
            findings.extend(_schema_error_findings(doc, leaf))
    return findings


def _schema_error_findings(doc: Document, error: ValidationError) -> Iterator[Finding]:
    where = pointer(*error.absolute_path)
    schema = error.schema if isinstance(error.schema, Mapping) else {}  # the DSL's schemas are objects, never `true`
    keys = alternative_keys(error)
    if keys and isinstance(error.instance, Mapping):
        given = [k for k in keys if k in error.instance]
        listed = " or ".join(repr(k) for k in keys)
        if given:
            yield doc.finding(
                where, f"give only one of {listed}, not {' and '.join(repr(k) for k in given)}", "dsl-oneOf", key=True
            )
        else:
            yield doc.finding(where, f"missing required key: one of {listed}", "dsl-missing-key", key=True)
        return
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        allowed = list(schema.get("properties", {}))
        for extra in error.instance:
            if extra not in allowed:
                hint = (
                    cut_text(extra, error.instance[extra])
                    or did_you_mean(extra, allowed)
                    or f"; expected one of {one_of(allowed)}"
                )
                yield doc.finding(
                    where + pointer(extra),
                    f"unknown key {extra!r}{hint}",
                    "dsl-unknown-key",
                    key=True,
                )
        return
    if error.validator == "required" and isinstance(error.instance, Mapping):
        required = error.validator_value if isinstance(error.validator_value, list) else []
        for key in required:  # jsonschema reports one missing key per error
            if key not in error.instance and error.message == f"{key!r} is a required property":
                yield doc.finding(where, f"missing required key {key!r}", "dsl-missing-key", key=True)
        return
    if error.validator == "uniqueItems" and isinstance(error.instance, list):
        seen: list[Any] = []
        for i, item in enumerate(error.instance):
            if item in seen:
                yield doc.finding(where + pointer(i), f"{describe(item)} is listed more than once", "dsl-uniqueItems")
                return
            seen.append(item)
    if error.validator == "pattern" and schema.get("pattern") == HEADER_NAME_PATTERN:
        yield doc.finding(
            where + pointer(error.instance),
            f"{error.instance!r} is not a NATS header name: use printable ASCII without spaces or ':'",
            "dsl-header",
            key=True,
        )
        return
    if error.validator == "pattern" and schema.get("pattern") == NO_LINE_BREAK_PATTERN:
        yield doc.finding(where, "a NATS header value cannot hold a line break", "dsl-header")
        return
    if error.validator == "pattern" and "propertyNames" in error.absolute_schema_path:
        yield doc.finding(
            where + pointer(error.instance),
            f"{error.instance!r} is not a valid name: use letters, digits, '_' and '-', starting with a letter or '_'",
            "dsl-name",
            key=True,
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
    return "type" if error.validator in ("oneOf", "anyOf") and union_types(error) else str(error.validator)
