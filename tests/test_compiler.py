"""The compiled aggregate: its transitions Machine, decide and evolve."""

from __future__ import annotations

import datetime as dt

import pytest
from transitions import Machine

from esfsm.errors import ReplayError
from esfsm.events import new_event
from esfsm.project import Project
from esfsm.values import CommandRequest

NOW = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def test_machine_has_every_state_and_one_trigger_per_event(project: Project) -> None:
    compiled = project.aggregates["bankaccount"]
    assert isinstance(compiled.machine, Machine)
    assert list(compiled.machine.states) == ["none", "open", "frozen", "closed"]
    assert set(compiled.machine.events) == set(compiled.model.events)
    assert compiled.machine.get_triggers("frozen") == ["account_unfrozen", "account_closed"]
    assert compiled.machine.get_triggers("closed") == []


def test_accepting_states_follow_the_events(project: Project) -> None:
    compiled = project.aggregates["bankaccount"]
    accepted = {name: sorted(c.accepted_states) for name, c in compiled.commands.items()}
    assert accepted["open_account"] == ["none"]
    assert accepted["close"] == ["frozen", "open"]
    assert accepted["unfreeze"] == ["frozen"]
    lab = project.aggregates["lab"]
    assert sorted(lab.commands["finish"].accepted_states) == ["on"]


def test_a_command_of_only_conditional_emits_is_accepted_only_where_one_can_fire(project: Project) -> None:
    lab = project.aggregates["lab"]
    assert sorted(lab.commands["touch"].accepted_states) == ["on"]
    refused = lab.decide(lab.initial_state("k"), CommandRequest("touch", "k", {}, {}), NOW)
    assert (refused.accepted, refused.code) == (False, 409)
    on = lab.replay("k", [new_event("lab", "switched_on", "k", 1, {"at": "x"}, NOW)])
    nothing = lab.decide(on, CommandRequest("touch", "k", {}, {}), NOW)
    assert nothing.accepted and nothing.events == () and nothing.state == on


def test_evolve_moves_state_through_the_machine_and_applies_data(project: Project) -> None:
    compiled = project.aggregates["bankaccount"]
    state = compiled.initial_state("k")
    state = compiled.evolve(
        state, new_event("bankaccount", "account_opened", "k", 1, {"owner": "a", "balance": 5}, NOW)
    )
    state = compiled.evolve(state, new_event("bankaccount", "account_frozen", "k", 2, {}, NOW))
    assert (state.state, state.version, dict(state.data)) == ("frozen", 2, {"owner": "a", "balance": 5})


def test_evolve_refuses_an_event_that_is_not_a_transition_from_the_state(project: Project) -> None:
    compiled = project.aggregates["bankaccount"]
    with pytest.raises(ReplayError, match="cannot apply event 'funds_deposited' in state 'none'"):
        compiled.evolve(
            compiled.initial_state("k"), new_event("bankaccount", "funds_deposited", "k", 1, {"amount": 1}, NOW)
        )


def test_evolve_refuses_an_unknown_event_type(project: Project) -> None:
    compiled = project.aggregates["bankaccount"]
    with pytest.raises(ReplayError, match="unknown event type"):
        compiled.evolve(compiled.initial_state("k"), new_event("bankaccount", "nope", "k", 1, {}, NOW))


def test_decide_is_pure_given_the_clock_and_ids(project: Project) -> None:
    compiled = project.aggregates["lab"]
    request = CommandRequest("switch_on", "k", {"level": 2}, {})
    ids = iter(["1", "2", "3", "4"])
    first = compiled.decide(compiled.initial_state("k"), request, NOW, lambda: next(ids))
    second = compiled.decide(compiled.initial_state("k"), request, NOW, lambda: next(ids))
    assert first.accepted and second.accepted
    assert first.state == second.state
    assert [e.get_data() for e in first.events] == [e.get_data() for e in second.events]
    assert [e.get_id() for e in first.events] == ["1", "2"]
    assert first.events[0].get_data() == {"at": "2025-01-02T03:04:05Z"}
    assert compiled.initial_state("k").version == 0  # the input state was not touched


def test_decide_does_not_mutate_the_input_state(project: Project) -> None:
    compiled = project.aggregates["bankaccount"]
    opened = compiled.replay(
        "k", [new_event("bankaccount", "account_opened", "k", 1, {"owner": "a", "balance": 500}, NOW)]
    )
    before = dict(opened.data)
    decision = compiled.decide(opened, CommandRequest("withdraw", "k", {"amount": 100}, {"x-username": "a"}), NOW)
    assert decision.accepted and decision.state.data["balance"] == 400
    assert dict(opened.data) == before
