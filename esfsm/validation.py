"""JSON Schema checks for payloads, event data and aggregate data.

jsonschema (draft 2020-12) is the authority and writes every error message.
Checking is the hot path of each command (three checks per accepted command),
and jsonschema's interpreter costs ~30 µs a check; so a schema that uses only
keywords meaning the same in draft 7 is also compiled to Python code by
fastjsonschema (~2 µs) and that answers "valid?". Whenever it says "invalid",
or the instance holds something the two could judge differently, jsonschema
decides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator, validators
from jsonschema.protocols import Validator

from esfsm.findings import pointer
from esfsm.values import ErrorDetail

# Keywords whose draft-7 meaning (fastjsonschema) equals their 2020-12 meaning (jsonschema).
# Left out on purpose: format (the two check different formats), $ref/$defs, items as a
# list, prefixItems, dependent*, unevaluated*, contains' min/max, if/then/else, $schema.
_SAME_IN_DRAFT7 = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "const",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minProperties",
        "maxProperties",
        "propertyNames",
        "patternProperties",
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "description",
        "title",
        "default",
        "examples",
    }
)


def _is_strict_integer(checker: Any, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


# JSON Schema calls 10.0 an integer; CEL does not (10.0 + 1 fails). Payloads must
# send integers as integers, so a definition's integer fields never surprise CEL.
# (types-jsonschema leaves validators.extend unannotated; what it returns is a Validator class.)
StrictValidator: type[Validator] = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_strict_integer),
)


def _portable(schema: Any) -> bool:
    """Whether schema (and every subschema) uses only keywords of _SAME_IN_DRAFT7."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, Mapping) or not set(schema) <= _SAME_IN_DRAFT7:
        return False
    for key, value in schema.items():
        if key in ("properties", "patternProperties"):
            if not isinstance(value, Mapping) or not all(_portable(v) for v in value.values()):
                return False
        elif key in ("additionalProperties", "items", "propertyNames", "not"):
            if not _portable(value):
                return False
        elif key in ("allOf", "anyOf", "oneOf") and not (isinstance(value, list) and all(map(_portable, value))):
            return False
    return True


def _plain(instance: Any) -> bool:
    """No value the two engines judge differently: integral floats, and non-JSON types."""
    kind = type(instance)
    if kind is str or kind is int or kind is bool or instance is None:
        return True
    if kind is dict:
        for k, v in instance.items():
            if type(k) is not str or not (type(v) is str or type(v) is int or _plain(v)):
                return False
        return True
    if kind is list:
        return all(_plain(v) for v in instance)
    if kind is float:
        return not instance.is_integer()
    return isinstance(instance, (str, int)) and not isinstance(instance, float)  # subclasses: as before


class SchemaCheck:
    """A compiled JSON Schema: a fast `is_valid` and jsonschema's errors."""

    def __init__(self, schema: Any) -> None:
        self.schema = schema
        self.validator = StrictValidator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
        self._fast: Callable[[Any], Any] | None = None
        if _portable(schema):
            try:
                self._fast = fastjsonschema.compile(
                    {"$schema": "http://json-schema.org/draft-07/schema#", **schema}
                    if isinstance(schema, Mapping)
                    else schema
                )
            except (fastjsonschema.JsonSchemaDefinitionException, TypeError, ValueError):
                self._fast = None

    def is_valid(self, instance: Any) -> bool:
        if self._fast is not None and _plain(instance):
            try:
                self._fast(instance)
                return True
            except fastjsonschema.JsonSchemaValueException:
                pass
        return bool(self.validator.is_valid(instance))

    def errors(self, instance: Any) -> tuple[ErrorDetail, ...]:
        """Every error with the JSON pointer of the offending value, sorted by pointer."""
        details = []
        for error in self.validator.iter_errors(instance):
            path = list(error.absolute_path)
            if (
                error.validator == "required"
                and isinstance(error.instance, Mapping)
                and isinstance(error.validator_value, list)
            ):
                missing = [p for p in error.validator_value if p not in error.instance and repr(p) in error.message]
                path += missing[:1]
            details.append(ErrorDetail(pointer(*path), error.message))
        return tuple(sorted(details, key=lambda d: d.path))
