"""Replay is the judge of `esfsm validate --against`.

tests/evolution_corpus/ holds before/after pairs of one definition, safe and
unsafe, each with the exact output `esfsm validate after.yaml --against
before.yaml` gives (expected.txt) and, here, the effect the change declares on
an entity's state (EFFECTS). Hypothesis generates histories valid under
`before` (events valid in the current state, data drawn from their schema,
stored under any name the event may be stored under) and replays them under
`after` through the one read path. The property: `validate --against` reports
an error exactly when some history fails to replay under `after`, or replays
to a state other than the declared effect of the change on its `before` state.

Where `after` stores its events elsewhere (a renamed stream or events prefix),
it replays nothing of the history: the events stayed behind.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from esfsm import model as m
from esfsm import reading
from esfsm.cli import main
from esfsm.compiler import CompiledAggregate
from esfsm.events import new_event
from esfsm.loader import load_file

CORPUS = Path(__file__).resolve().parent / "evolution_corpus"
PAIRS = sorted(p.name for p in CORPUS.iterdir() if p.is_dir())
KEY = "acc-1"
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
MAX_EVENTS = 8

State = tuple[str, dict[str, Any]]  # (state, data) of an entity
Effect = Callable[[State], State]


def same(state: State) -> State:
    return state


def _with(change: Callable[[State], dict[str, Any]]) -> Effect:
    return lambda s: (s[0], {**s[1], **change(s)})


EFFECTS: dict[str, Effect] = {
    "add_event": same,
    # every deposit stored before is read as a deposit in EUR (balance > 0: there was one; amounts are >= 1)
    "add_field_with_default": _with(lambda s: {"currency": "EUR"} if s[1]["balance"] > 0 else {}),
    "add_field_without_upcast": _with(lambda s: {"currency": "EUR"} if s[1]["balance"] > 0 else {}),
    "change_old_upcast": same,
    "change_stream_name": same,
    "fix_apply": _with(lambda s: {"balance": 0} if s[0] == "closed" else {}),
    "narrow_from": same,
    "raise_version_without_upcast": same,
    "remove_command": same,
    "remove_event_type": same,
    "remove_state_mapped_out": lambda s: ("open" if s[0] == "frozen" else s[0], s[1]),
    "remove_state_not_mapped": lambda s: ("open" if s[0] == "frozen" else s[0], s[1]),
    "redirect_to": lambda s: ("open" if s[0] == "frozen" else s[0], s[1]),
    "rename_and_reshape": same,
    "rename_with_formerly": same,
    "rename_without_formerly": same,
    "reshape_field_with_upcast": same,
    "retire_keeping_apply": same,
    "upcast_reads_missing_field": _with(lambda s: {"currency": "EUR"} if s[1]["balance"] > 0 else {}),
    "version_lowered": lambda s: (s[0], {k: v for k, v in s[1].items() if k != "currency"}),
}


def test_the_corpus_has_a_dozen_pairs_each_with_an_effect_and_an_expected_output() -> None:
    assert len(PAIRS) >= 12
    assert set(PAIRS) == set(EFFECTS)
    for pair in PAIRS:
        assert {"before.yaml", "after.yaml", "expected.txt"} <= {p.name for p in (CORPUS / pair).iterdir()}


# -- the definitions, as the runtime would run them ------------------------------------


def compiled(path: Path) -> CompiledAggregate:
    """The aggregate of a definition file, compiled without the checker (an `after` may have errors)."""
    doc, problems = load_file(path)
    assert doc is not None, problems
    return CompiledAggregate(m.build(doc.data, str(path)))


def _value(schema: Any) -> st.SearchStrategy[Any]:
    """Values of a (small) JSON Schema: the kinds the corpus uses."""
    if not isinstance(schema, Mapping):
        return st.just(None)
    kind = schema.get("type")
    if kind == "integer":
        return st.integers(schema.get("minimum", -1000), schema.get("maximum", 1000))
    if kind == "string":
        return st.text("abc", min_size=1, max_size=3)
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        fields = {name: _value(sub) for name, sub in props.items() if name in required}
        optional = {name: _value(sub) for name, sub in props.items() if name not in required}
        return st.fixed_dictionaries(fields, optional=optional)
    return st.just(None)


def _stored_forms(event: m.Event) -> list[tuple[str, int, Any]]:
    """(name, version, schema of its data) an event may be stored as: any name it may be stored under, at
    its version, or at an older one whose upcast step gives that version's schema."""
    versions = [(event.version, event.schema)]
    versions += [(u.version, u.schema) for u in event.upcasts if u.schema is not None]
    return [(name, version, schema) for name in event.stored_names for version, schema in versions]


@st.composite
def histories(draw: st.DrawFn, before: CompiledAggregate) -> list[Any]:
    """A history `before` replays: each event valid in the state the previous ones left, stored under any
    name and version it may be stored as, its data drawn from that version's schema."""
    state = before.initial_state(KEY)
    events: list[Any] = []
    for _ in range(draw(st.integers(0, MAX_EVENTS))):
        valid = [
            form
            for event in before.model.events.values()
            if before.next_state(state.state, event.name) is not None
            for form in _stored_forms(event)
        ]
        if not valid:
            break
        name, version, schema = draw(st.sampled_from(valid))
        number = state.version + 1
        stored = new_event(before.name, name, KEY, number, draw(_value(schema)), NOW, f"event-{number}", None, version)
        _, state = reading.apply(before, state, stored)
        events.append(stored)
    return events


def _reads_the_same_stream(before: CompiledAggregate, after: CompiledAggregate) -> bool:
    old, new = before.model.nats, after.model.nats
    return (old.stream, old.events) == (new.stream, new.events)


def broken(pair: str, before: CompiledAggregate, after: CompiledAggregate, history: list[Any]) -> bool:
    """Whether replaying history under `after` fails, or differs from the declared effect on its `before` state."""
    expected = EFFECTS[pair](_state(reading.replay(before, KEY, history)))
    try:
        replayed = reading.replay(after, KEY, history if _reads_the_same_stream(before, after) else [])
    except Exception:  # the judge looks for any failure to replay
        return True
    return _state(replayed) != expected


def _state(state: Any) -> State:
    return state.state, dict(state.data)


# -- validate --against, as a user runs it ---------------------------------------------


def validate_against(pair: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    monkeypatch.chdir(CORPUS / pair)
    result = CliRunner().invoke(main, ["validate", "after.yaml", "--against", "before.yaml"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.stdout


@pytest.mark.parametrize("pair", PAIRS)
def test_validate_against_prints_the_expected_output(pair: str, monkeypatch: pytest.MonkeyPatch) -> None:
    code, stdout = validate_against(pair, monkeypatch)
    assert stdout == (CORPUS / pair / "expected.txt").read_text()
    assert code == (1 if ": error: " in stdout else 0)


JUDGE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


@pytest.mark.parametrize("pair", PAIRS)
def test_an_error_is_reported_exactly_when_some_history_breaks(pair: str, monkeypatch: pytest.MonkeyPatch) -> None:
    code, stdout = validate_against(pair, monkeypatch)
    before, after = compiled(CORPUS / pair / "before.yaml"), compiled(CORPUS / pair / "after.yaml")
    if code == 1:
        try:
            find(
                histories(before), lambda h: broken(pair, before, after, h), settings=settings(JUDGE, max_examples=400)
            )
        except NoSuchExample:
            pytest.fail(f"validate --against reports an error, but no history breaks:\n{stdout}")
    else:

        @JUDGE
        @given(histories(before))
        def replays_as_declared(history: list[Any]) -> None:
            assert not broken(pair, before, after, history), [e.get_type() for e in history]

        replays_as_declared()
