"""What only the in-memory engine does (the shared behaviour is in test_behaviour.py)."""

from __future__ import annotations

import pytest

from esfsm.engine import MemoryEngine
from esfsm.project import Project


def test_unknown_aggregate_is_404_with_a_suggestion(project: Project) -> None:
    engine = MemoryEngine(project.aggregates.values())
    reply = engine.handle("bankacount", "deposit", "k", {"amount": 1}, {"x-username": "ann"})
    assert (reply.accepted, reply.code) == (False, 404)
    assert "did you mean 'bankaccount'" in reply.message


def test_recording_an_invalid_transition_stores_nothing(project: Project) -> None:
    import datetime as dt

    from esfsm.errors import ReplayError
    from esfsm.events import new_event

    engine = MemoryEngine(project.aggregates.values())
    event = new_event("bankaccount", "funds_deposited", "k", 1, {"amount": 1}, dt.datetime.now(dt.UTC))
    with pytest.raises(ReplayError):
        engine.record("bankaccount", "k", [event])
    assert engine.history("bankaccount", "k") == []


@pytest.mark.parametrize("command_id", ["", "x" * 257, "caf\u00e9", "a\nb"])
def test_malformed_command_id_is_400(project: Project, command_id: str) -> None:
    engine = MemoryEngine(project.aggregates.values())
    reply = engine.handle(
        "bankaccount",
        "open_account",
        "k",
        {"owner": "a", "initial_balance": 100},
        {"x-username": "ann", "x-esfsm-command-id": command_id},
    )
    assert (reply.accepted, reply.code) == (False, 400)
