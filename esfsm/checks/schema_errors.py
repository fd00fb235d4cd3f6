"""JSON Schema errors in words: the branch of a oneOf the author meant, and one sentence per error.

Shared by the DSL's own schema (dsl.py) and the schemas a definition writes
(json_schemas.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jsonschema.exceptions import ValidationError, best_match

from esfsm.findings import did_you_mean


def explain(error: ValidationError) -> list[ValidationError]:
    """For oneOf/anyOf, the errors of the one branch the value was meant for.

    A branch whose type does not match the value at all (say 'null' for a
    mapping) is not what the author meant; when exactly one branch is left, its
    own errors explain the failure. When no branch's type matches, the error
    stays as it is and reads as a type error naming every type allowed.
    """
    if not error.context or error.validator not in ("oneOf", "anyOf") or alternative_keys(error):
        return [error]
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    fitting = [errors for errors in branches.values() if not any(_type_mismatch(e) for e in errors)]
    if not fitting:
        return [error]
    if len(fitting) == 1:
        return [leaf for sub in fitting[0] for leaf in explain(sub)]
    return explain(best_match(sub for errors in fitting for sub in errors))


def alternative_keys(error: ValidationError) -> list[str]:
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


def _type_names(value: object) -> list[str]:
    """The value of a `type` keyword: one type name, or a list of them."""
    return [str(t) for t in value] if isinstance(value, list) else [str(value)]


def union_types(error: ValidationError) -> list[str]:
    types: list[str] = []
    for sub in error.context or ():
        if _type_mismatch(sub):
            types += [t for t in _type_names(sub.validator_value) if t not in types]
    return types


def schema_error_message(error: ValidationError) -> str:
    """A sentence for one (explained) JSON Schema error: the bad value, what was expected."""
    kind, value = error.validator, error.validator_value
    if kind == "type" or (kind in ("oneOf", "anyOf") and union_types(error)):
        types = _type_names(value) if kind == "type" else union_types(error)
        return f"expected {' or '.join(_article(t) for t in types)}, got {describe(error.instance)}"
    if kind == "enum" and isinstance(value, list):
        names = [str(v) for v in value]
        hint = did_you_mean(error.instance, names) if isinstance(error.instance, str) else ""
        return f"{describe(error.instance)} is not one of {', '.join(repr(v) for v in value)}{hint}"
    if kind in ("minProperties", "minItems") and not error.instance:
        what = "entry" if kind == "minProperties" else "item"
        return f"expected at least {value} {what}{'' if value == 1 else 's'}, got none"
    return error.message


def cut_text(key: str, value: Any) -> str:
    """A hint for 'description: a, b' in a {flow} mapping, which YAML reads as a key 'b' without a value."""
    if value is None and " " in key.strip():
        return "; is it the end of a text cut at an unquoted ','? Quote the text"
    return ""


def _article(kind: str) -> str:
    return {
        "object": "a mapping",
        "array": "a list",
        "null": "nothing (null)",
        "boolean": "true or false",
        "integer": "an integer",
        "string": "a string",
        "number": "a number",
    }.get(kind, repr(kind))


def describe(value: Any, limit: int = 60) -> str:
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
