"""An operator CEL has no overload for is explained by naming it and the two types, with only the hint that fits."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from esfsm.cel_errors import unsupported_operation
from esfsm.errors import EvaluationError
from esfsm.expressions import Expression

MAPS = "; maps cannot be added or merged in CEL: write the resulting map's fields one by one"


def reason(source: str, **variables: Any) -> str:
    with pytest.raises(EvaluationError) as caught:
        Expression(source, "/x").evaluate(variables)
    return caught.value.reason


def test_adding_two_maps_says_maps_cannot_be_added_and_nothing_about_int() -> None:
    said = reason("data + cmd", data={"a": 1}, cmd={"b": 2})
    assert said == "the operator '+' is not defined for a map and a map" + MAPS
    assert "int(x)" not in said


@pytest.mark.parametrize(
    ("source", "variables", "said"),
    [
        (
            "cmd.m + cmd.l",
            {"cmd": {"m": {"a": 1}, "l": [1]}},
            "the operator '+' is not defined for a map and a list" + MAPS,
        ),
        (
            "cmd.s + cmd.m",
            {"cmd": {"s": "a", "m": {"a": 1}}},
            "the operator '+' is not defined for a string and a map" + MAPS,
        ),
        ("cmd.m - cmd.m", {"cmd": {"m": {"a": 1}}}, "the operator '-' is not defined for a map and a map"),
        ("cmd.l - cmd.l", {"cmd": {"l": [1]}}, "the operator '-' is not defined for a list and a list"),
        ("cmd.a - cmd.b", {"cmd": {"a": "x", "b": "y"}}, "the operator '-' is not defined for a string and a string"),
        ("cmd.a % cmd.b", {"cmd": {"a": 1.0, "b": 2.0}}, "the operator '%' is not defined for a double and a double"),
        ("cmd.a + 1", {"cmd": {"a": True}}, "the operator '+' is not defined for a bool and an int"),
        (
            "now + 1",
            {"now": dt.datetime(2025, 1, 1, tzinfo=dt.UTC)},
            "the operator '+' is not defined for a timestamp and an int",
        ),
        (
            "cmd.a + 1",
            {"cmd": {"a": None}},
            "the operator '+' is not defined for null and an int; null has no operators (is a field null?)",
        ),
    ],
)
def test_an_operator_without_an_overload_names_the_operator_and_both_types(
    source: str, variables: dict[str, Any], said: str
) -> None:
    assert reason(source, **variables) == said


def test_converting_is_suggested_only_between_types_that_convert_and_only_to_a_type_the_operator_takes() -> None:
    assert reason("cmd.a * 2", cmd={"a": 1.5}) == (
        "the operator '*' is not defined for a double and an int; CEL does not convert between types: "
        "convert one side to the other's type with double(x) or int(x)"
    )
    assert reason("'x' * 2") == (
        "the operator '*' is not defined for a string and an int; CEL does not convert between types: "
        "convert one side to the other's type with int(x)"
    )


def test_other_messages_are_left_to_the_caller() -> None:
    assert unsupported_operation("division by zero in CEL expression") is None
    assert unsupported_operation("No such overload: the operation is not defined for the given operand types.") is None
