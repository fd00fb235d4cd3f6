"""Replay is deterministic: folding the stored events gives the engine's state exactly."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from esfsm.engine import MemoryEngine
from esfsm.events import event_from_json, event_to_json
from esfsm.project import Project

KEYS = ["a", "b", "c"]
ANN = {"x-username": "ann"}

commands = st.one_of(
    st.tuples(st.just("open_account"), st.sampled_from(KEYS),
              st.fixed_dictionaries({"owner": st.text(min_size=1, max_size=5),
                                     "initial_balance": st.integers(0, 500)})),
    st.tuples(st.sampled_from(["deposit", "withdraw"]), st.sampled_from(KEYS),
              st.fixed_dictionaries({"amount": st.integers(-5, 300)})),
    st.tuples(st.sampled_from(["freeze", "unfreeze", "close"]), st.sampled_from(KEYS), st.just({})),
)


def engine_after(project: Project, steps: list) -> MemoryEngine:
    """A fresh engine that has handled steps (accepted or not)."""
    engine = MemoryEngine([project.aggregates["bankaccount"]])
    for name, key, payload in steps:
        engine.handle("bankaccount", name, key, payload, ANN)
    return engine


@settings(max_examples=150, deadline=None)
@given(st.lists(commands, max_size=40))
def test_replaying_accepted_events_rebuilds_the_engine_state(project: Project, steps: list) -> None:
    compiled = project.aggregates["bankaccount"]
    engine = engine_after(project, steps)
    for key in KEYS:
        live = engine.state("bankaccount", key)
        history = engine.history("bankaccount", key)
        assert compiled.replay(key, history) == live
        # Through the wire format (CloudEvents JSON) and back: still identical.
        decoded = [event_from_json(event_to_json(e)) for e in history]
        assert compiled.replay(key, decoded) == live
        assert live.version == len(history)
        assert live.data.get("balance", 0) >= 0


@settings(max_examples=60, deadline=None)
@given(st.lists(commands, max_size=30))
def test_a_fresh_engine_on_the_same_store_sees_the_same_states(project: Project, steps: list) -> None:
    first = engine_after(project, steps)
    second = MemoryEngine([project.aggregates["bankaccount"]], store=first.store)
    for key in KEYS:
        assert second.state("bankaccount", key) == first.state("bankaccount", key)
