"""Handing CEL only the fields an expression reads (expressions.projection) changes
nothing: same results, same errors, as the original program given whole maps."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esfsm.errors import EvaluationError
from esfsm.expressions import Expression, compile_expression, projection

PROJECTED = [
    "cmd.amount",
    "cmd.amount <= data.balance",
    "data.balance + event.amount",
    "'x-username' in meta && meta['x-username'] != 'unauthorized'",
    "!('x-role' in meta) || meta[\"x-role\"] == 'admin'",
    "data.owner == 'ann' ? data.balance : 0",
    "cmd.amount > 10 || cmd.flag",
    "'a' in meta ? meta.a : 'none'",
    "data.nested.x == 1",
    "size(cmd.name) > 2 && state == 'open' && version < 5 && key != ''",
]
NOT_PROJECTED = [
    "has(cmd.amount)",
    "size(meta) > 1",
    "x + 'a' in meta",
    "cmd.items.all(i, i > 0)",
    "cmd == {'amount': 1}",
    "meta['x-' + 'a'] == 'b'",
    "!'a' in meta",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.text(max_size=4),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
)
fields = st.sampled_from(["amount", "balance", "owner", "flag", "name", "x", "a", "x-username", "x-role", "nested"])
maps = st.dictionaries(fields, st.one_of(scalars, st.dictionaries(fields, scalars, max_size=2)), max_size=5)
variables = st.fixed_dictionaries(
    {
        "cmd": maps,
        "data": maps,
        "event": maps,
        "meta": st.dictionaries(fields, st.sampled_from(["ann", "admin", "unauthorized", ""]), max_size=3),
        "state": st.sampled_from(["open", "none"]),
        "version": st.integers(0, 9),
        "key": st.text(max_size=3),
    }
)


def outcome(evaluate: Any) -> tuple[str, Any]:
    try:
        value = evaluate()
    except EvaluationError as err:
        return "error", err.reason
    return "value", (type(value).__name__, value)


def original(source: str, names: tuple[str, ...], values: dict[str, Any]) -> tuple[str, Any]:
    expression = Expression(source, "test")

    def plain() -> Any:
        try:
            return compile_expression(source).execute({n: values[n] for n in names if n in values})
        except Exception as err:  # as Expression.evaluate does: the binding raises many types
            from esfsm.expressions import _reason

            raise EvaluationError("test", source, _reason(err)) from err

    assert expression.names == names
    return outcome(plain)


def test_which_expressions_are_projected() -> None:
    for source in PROJECTED:
        assert projection(source, Expression(source, "t").names) is not None, source
    for source in NOT_PROJECTED:
        try:
            names = Expression(source, "t").names
        except (ValueError, RuntimeError):
            continue  # does not even compile
        assert projection(source, names) is None, source


def test_a_single_field_read_skips_cel_only_for_scalars() -> None:
    expression = Expression("cmd.items", "t")
    items = [1, 2]
    result = expression.evaluate({"cmd": {"items": items}})
    assert result == [1, 2] and result is not items  # CEL's copy: later changes cannot leak into the payload
    assert Expression("cmd.amount", "t").evaluate({"cmd": {"amount": 3}}) == 3
    with pytest.raises(EvaluationError) as failed:  # a missing field fails as it does in CEL
        expression.evaluate({"cmd": {"amount": 3}})
    assert failed.value.reason == "no such key: 'items'"


@settings(max_examples=300, deadline=None)
@given(values=variables, index=st.integers(0, len(PROJECTED) - 1))
def test_projected_and_original_agree(values: dict[str, Any], index: int) -> None:
    source = PROJECTED[index]
    expression = Expression(source, "test")
    assert outcome(lambda: expression.evaluate(values)) == original(source, expression.names, values)


@settings(max_examples=200, deadline=None)
@given(values=variables, index=st.integers(0, len(PROJECTED) - 1))
def test_remembered_results_equal_fresh_ones(values: dict[str, Any], index: int) -> None:
    """The second evaluation may come from the memo: it must equal the original program's."""
    source = PROJECTED[index]
    expression = Expression(source, "test")
    first = outcome(lambda: expression.evaluate(values))
    second = outcome(lambda: expression.evaluate(values))
    assert first == second == original(source, expression.names, values)


def test_what_is_remembered() -> None:
    rule = Expression("'x-username' in meta && meta['x-username'] != 'unauthorized'", "t")
    plan = rule.projection
    assert plan is not None
    plan.memo.clear()
    assert rule.evaluate({"meta": {"x-username": "ann", "x-esfsm-command-id": "c1"}}) is True
    assert rule.evaluate({"meta": {"x-username": "ann", "x-esfsm-command-id": "c2"}}) is True
    assert len(plan.memo) == 1  # the command id is not read, so both share one entry
    assert rule.evaluate({"meta": {"x-username": "unauthorized"}}) is False
    assert len(plan.memo) == 2
    assert rule.evaluate({"meta": {"x-username": "x" * 500}}) is True and len(plan.memo) == 2  # long: not kept
    clock = Expression("now > timestamp('2020-01-01T00:00:00Z') && cmd.amount > 1", "t")
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    assert clock.evaluate({"now": now, "cmd": {"amount": 2}}) is True
    assert clock.projection is not None and not clock.projection.memo  # reads `now`: never remembered
    half = Expression("1.0 / cmd.x", "t")
    assert half.evaluate({"cmd": {"x": 0.5}}) == 2.0
    assert half.projection is not None and not half.projection.memo  # floats are not remembered


def test_runtime_cel_errors_say_what_is_wrong() -> None:
    """The CEL library calls a known function given the wrong types 'undefined', and leaves a bad
    regex's reason empty: the messages a definition's author sees say what is wrong instead."""

    def reason(source: str, **values: Any) -> str:
        kind, why = outcome(lambda: Expression(source, "t").evaluate(values))
        assert kind == "error"
        return str(why)

    assert reason("cmd.s.startsWith(1)", cmd={"s": "abc"}).startswith(
        "function 'startsWith' does not take arguments of these types (CEL does not convert between types"
    )
    assert reason("size(cmd.n)", cmd={"n": 3}).startswith("function 'size' does not take arguments of these types")
    assert reason("cmd.s.matches('[')", cmd={"s": "abc"}) == "'[' is not a valid regular expression (RE2 syntax)"
    assert reason("nosuch + 1").startswith("Undefined variable or function: 'nosuch'")  # not a function: as is
