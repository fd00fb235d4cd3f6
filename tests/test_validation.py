"""The schema check: fastjsonschema answers 'valid?' only where it agrees with jsonschema."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from esfsm.project import Project
from esfsm.validation import SchemaCheck

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def all_schemas(project: Project) -> list[Any]:
    schemas = []
    for compiled in project.aggregates.values():
        schemas.append(compiled.model.data_schema)
        schemas += [c.model.schema for c in compiled.commands.values()]
        schemas += [e.schema for e in compiled.model.events.values()]
    return schemas


def test_the_example_schemas_take_the_fast_path(project: Project) -> None:
    fast = [SchemaCheck(s)._fast is not None for s in all_schemas(project)]
    assert sum(fast) >= len(fast) * 0.8


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fast_and_reference_agree_on_every_example_schema(project: Project, data: st.DataObject) -> None:
    schema = data.draw(st.sampled_from(all_schemas(project)))
    check = SchemaCheck(schema)
    instance = data.draw(json_values | st.fixed_dictionaries({"amount": json_values, "sku": json_values}))
    assert check.is_valid(instance) == check.validator.is_valid(instance)


def test_an_integral_float_is_not_an_integer() -> None:
    check = SchemaCheck({"type": "object", "properties": {"n": {"type": "integer"}}})
    assert check._fast is not None
    assert check.is_valid({"n": 10}) and not check.is_valid({"n": 10.0}) and not check.is_valid({"n": True})


def test_formats_and_refs_are_left_to_jsonschema() -> None:
    assert SchemaCheck({"type": "string", "format": "email"})._fast is None
    assert SchemaCheck({"$defs": {"a": {"type": "string"}}, "$ref": "#/$defs/a"})._fast is None
    assert SchemaCheck({"type": "object", "properties": {"x": {"prefixItems": [{"type": "string"}]}}})._fast is None
