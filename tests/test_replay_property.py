"""Replay is deterministic: folding the stored events rebuilds the state the engine kept.

The engine keeps each entity's state as it handles commands (the state an accepted
decision leads to). The properties fold the event log the engine stored
(`CompiledAggregate.replay`) after every command of a random sequence and compare it
with that live state; a small model of bankaccount written out by hand here says, apart
from both, what the live state must be, so that a bug shared by `decide` and `evolve`
cannot pass as agreement. One example does the same on the NATS runtime: the KV
snapshot against a fold of the stream's history.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import NatsDriver

from esfsm.engine import MemoryEngine
from esfsm.events import event_from_dict, event_from_json, event_to_json
from esfsm.project import Project

KEYS = ["a", "b", "c"]
ANN = {"x-username": "ann"}

commands = st.one_of(
    st.tuples(
        st.just("open_account"),
        st.sampled_from(KEYS),
        st.fixed_dictionaries({"owner": st.text(min_size=1, max_size=5), "initial_balance": st.integers(0, 500)}),
    ),
    st.tuples(
        st.sampled_from(["deposit", "withdraw"]),
        st.sampled_from(KEYS),
        st.fixed_dictionaries({"amount": st.integers(-5, 300)}),
    ),
    st.tuples(st.sampled_from(["freeze", "unfreeze", "close"]), st.sampled_from(KEYS), st.just({})),
)


@dataclass(frozen=True)
class Account:
    """bankaccount as definitions/bankaccount.yaml describes it, for user ann."""

    state: str = "none"
    data: dict[str, Any] = field(default_factory=lambda: {"balance": 0})
    version: int = 0

    def handle(self, command: str, payload: dict[str, Any]) -> Account | int:
        """The account after command, or the code it is rejected with."""
        balance = self.data["balance"]
        if command in {"deposit", "withdraw"} and payload["amount"] < 1:
            return 400  # the schema: minimum 1
        accepted_in = {
            "open_account": {"none"},
            "deposit": {"open"},
            "withdraw": {"open"},
            "freeze": {"open"},
            "unfreeze": {"frozen"},
            "close": {"open", "frozen"},
        }
        if self.state not in accepted_in[command]:
            return 409
        if command == "open_account":
            if payload["initial_balance"] < 100:
                return 422
            return self.moved("open", {"owner": payload["owner"], "balance": payload["initial_balance"]})
        if command == "deposit":
            return self.moved("open", {"balance": balance + payload["amount"]})
        if command == "withdraw":
            return 422 if payload["amount"] > balance else self.moved("open", {"balance": balance - payload["amount"]})
        if command == "close":
            return 422 if balance != 0 else self.moved("closed", {})
        return self.moved({"freeze": "frozen", "unfreeze": "open"}[command], {})

    def moved(self, state: str, changes: dict[str, Any]) -> Account:
        return replace(self, state=state, data={**self.data, **changes}, version=self.version + 1)


def engine_after(project: Project, steps: list) -> MemoryEngine:
    """A fresh engine that has handled steps (accepted or not)."""
    engine = MemoryEngine([project.aggregates["bankaccount"]])
    for name, key, payload in steps:
        engine.handle("bankaccount", name, key, payload, ANN)
    return engine


@settings(max_examples=150, deadline=None)
@given(st.lists(commands, max_size=40))
def test_replaying_the_stored_events_rebuilds_the_live_state_after_every_command(project: Project, steps: list) -> None:
    compiled = project.aggregates["bankaccount"]
    engine = MemoryEngine([compiled])
    model = {key: Account() for key in KEYS}
    for name, key, payload in steps:
        decision = engine.handle("bankaccount", name, key, payload, ANN)
        expected = model[key].handle(name, payload)
        if isinstance(expected, int):
            assert (decision.accepted, getattr(decision, "code", None)) == (False, expected), (name, payload)
        else:
            assert decision.accepted, (name, payload, decision)
            model[key] = expected
        live = engine.state("bankaccount", key)
        if decision.accepted:
            assert decision.state == live
        assert (live.state, dict(live.data), live.version) == (model[key].state, model[key].data, model[key].version)
        stored = engine.history("bankaccount", key)
        assert len(stored) == live.version
        assert compiled.replay(key, stored) == live
    for key in KEYS:
        live = engine.state("bankaccount", key)
        stored = engine.history("bankaccount", key)
        # Through the wire format (CloudEvents JSON) and back: still identical.
        assert compiled.replay(key, [event_from_json(event_to_json(e)) for e in stored]) == live
        assert live.data["balance"] >= 0


@settings(max_examples=60, deadline=None)
@given(st.lists(commands, max_size=30))
def test_a_fresh_engine_on_the_same_store_sees_the_same_states(project: Project, steps: list) -> None:
    first = engine_after(project, steps)
    second = MemoryEngine([project.aggregates["bankaccount"]], store=first.store)
    for key in KEYS:
        assert second.state("bankaccount", key) == first.state("bankaccount", key)


def test_on_nats_the_kv_snapshot_is_the_fold_of_the_stream(project: Project, nats_driver: NatsDriver) -> None:
    compiled = project.aggregates["bankaccount"]
    key = f"replay-{uuid.uuid4().hex[:12]}"
    model = Account()
    for name, payload in [
        ("open_account", {"owner": "ann", "initial_balance": 150}),
        ("deposit", {"amount": 25}),
        ("withdraw", {"amount": 500}),
        ("withdraw", {"amount": 75}),
        ("freeze", {}),
        ("deposit", {"amount": 1}),
        ("unfreeze", {}),
        ("withdraw", {"amount": 100}),
    ]:
        reply = nats_driver.send("bankaccount", name, key, payload, ANN)
        expected = model.handle(name, payload)
        assert reply["accepted"] is not isinstance(expected, int), (name, reply)
        model = model if isinstance(expected, int) else expected
    snapshot = nats_driver.state("bankaccount", key)
    history = nats_driver.history("bankaccount", key)
    assert len(history) == model.version == 6
    assert compiled.replay(key, [event_from_dict(e) for e in history]).as_dict() == snapshot
    assert (
        (snapshot["state"], snapshot["data"]) == (model.state, model.data) == ("open", {"owner": "ann", "balance": 0})
    )
