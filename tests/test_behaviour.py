"""The behaviour suite: what any esfsm engine must do, in wire terms.

Written once against the Driver interface (tests/drivers.py) and run for each
engine through the parametrised ``driver`` fixture.
"""

from __future__ import annotations

import uuid

import pytest

from drivers import Driver, MemoryDriver

from esfsm.project import Project

ANN = {"x-username": "ann"}


@pytest.fixture(params=["memory", "nats"])
def driver(request: pytest.FixtureRequest, project: Project) -> Driver:
    if request.param == "nats":
        return request.getfixturevalue("nats_driver")  # type: ignore[no-any-return]
    return MemoryDriver(project)


def new_key() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


def open_account(driver: Driver, key: str, balance: int = 150) -> dict:
    reply = driver.send("bankaccount", "open_account", key, {"owner": "ann", "initial_balance": balance}, ANN)
    assert reply["accepted"], reply
    return reply


def test_accepted_command_reports_version_state_and_events(driver: Driver) -> None:
    key = new_key()
    reply = open_account(driver, key)
    assert reply["version"] == 1
    assert reply["state"] == "open"
    assert [e["type"] for e in reply["events"]] == ["account_opened"]
    assert reply["events"][0]["data"] == {"owner": "ann", "balance": 150}
    assert driver.state("bankaccount", key) == {
        "version": 1,
        "key": key,
        "state": "open",
        "data": {"owner": "ann", "balance": 150},
    }


def test_events_are_cloudevents_with_entity_key_and_version(driver: Driver) -> None:
    key = new_key()
    open_account(driver, key)
    driver.send("bankaccount", "deposit", key, {"amount": 5}, ANN)
    history = driver.history("bankaccount", key)
    assert [e["type"] for e in history] == ["account_opened", "funds_deposited"]
    for version, event in enumerate(history, start=1):
        assert event["specversion"] == "1.0"
        assert event["entitykey"] == key
        assert event["aggversion"] == version
        assert event["source"] == "esfsm/bankaccount"
        assert event["datacontenttype"] == "application/json"
        assert event["id"] and event["time"]
    assert len({e["id"] for e in history}) == 2


def test_schema_failure_is_400_with_the_pointer_of_each_error(driver: Driver) -> None:
    reply = driver.send("bankaccount", "open_account", new_key(), {"owner": "", "initial_balance": "x"}, ANN)
    assert reply["accepted"] is False
    assert reply["code"] == 400
    assert [e["path"] for e in reply["errors"]] == ["/initial_balance", "/owner"]


def test_missing_required_field_points_at_the_field(driver: Driver) -> None:
    reply = driver.send("bankaccount", "open_account", new_key(), {"owner": "ann"}, ANN)
    assert reply["code"] == 400
    assert reply["errors"] == [{"path": "/initial_balance", "message": "'initial_balance' is a required property"}]


@pytest.mark.parametrize("headers", [{}, {"x-username": "unauthorized"}], ids=["no-user", "refused-user"])
def test_authorize_rule_failure_is_403(driver: Driver, headers: dict[str, str]) -> None:
    reply = driver.send("bankaccount", "open_account", new_key(), {"owner": "ann", "initial_balance": 150}, headers)
    assert (reply["accepted"], reply["code"], reply["message"]) == (False, 403, "unauthorized user")


def test_unknown_command_is_404_with_a_suggestion(driver: Driver) -> None:
    reply = driver.send("bankaccount", "withdrw", new_key(), {"amount": 1}, ANN)
    assert reply["code"] == 404
    assert reply["message"] == "unknown command 'withdrw' for aggregate 'bankaccount'; did you mean 'withdraw'?"


def test_command_not_accepted_in_current_state_is_409_naming_the_state(driver: Driver) -> None:
    key = new_key()
    open_account(driver, key)
    assert driver.send("bankaccount", "freeze", key, {}, ANN)["accepted"]
    reply = driver.send("bankaccount", "deposit", key, {"amount": 5}, ANN)
    assert (reply["code"], reply["message"]) == (409, "command 'deposit' is not accepted in state 'frozen'")


def test_state_check_comes_before_business_rules(driver: Driver) -> None:
    """A withdrawal from an account never opened is a 409, not 'insufficient funds'."""
    reply = driver.send("bankaccount", "withdraw", new_key(), {"amount": 500}, ANN)
    assert (reply["code"], reply["message"]) == (409, "command 'withdraw' is not accepted in state 'none'")


def test_business_rule_failure_is_422_with_the_field_pointer(driver: Driver) -> None:
    key = new_key()
    open_account(driver, key, 150)
    reply = driver.send("bankaccount", "withdraw", key, {"amount": 151}, ANN)
    assert (reply["code"], reply["message"]) == (422, "insufficient funds")
    assert reply["errors"] == [{"path": "/amount", "message": "insufficient funds"}]
    assert driver.state("bankaccount", key)["data"]["balance"] == 150


def test_rejection_writes_nothing(driver: Driver) -> None:
    key = new_key()
    open_account(driver, key)
    driver.send("bankaccount", "withdraw", key, {"amount": 10_000}, ANN)
    driver.send("bankaccount", "deposit", key, {"amount": 0}, ANN)
    assert len(driver.history("bankaccount", key)) == 1
    assert driver.state("bankaccount", key)["version"] == 1


@pytest.mark.parametrize(
    "key",
    ["", "a.b", "a*", ">", "a b", "é", "x" * 129, "a/b"],
    ids=["empty", "dot", "star", "gt", "space", "unicode", "too-long", "slash"],
)
def test_invalid_entity_key_is_400(driver: Driver, key: str) -> None:
    reply = driver.send("bankaccount", "open_account", key, {"owner": "ann", "initial_balance": 150}, ANN)
    assert reply["accepted"] is False
    assert reply["code"] == 400


def test_longest_valid_key_is_accepted(driver: Driver) -> None:
    key = "K=_-" + "x" * 124
    assert open_account(driver, key)["version"] == 1


def test_expected_version_matching_is_accepted_and_stale_is_409(driver: Driver) -> None:
    key = new_key()
    first = driver.send(
        "bankaccount",
        "open_account",
        key,
        {"owner": "ann", "initial_balance": 150},
        {**ANN, "x-esfsm-expected-version": "0"},
    )
    assert first["accepted"]
    ok = driver.send("bankaccount", "deposit", key, {"amount": 1}, {**ANN, "x-esfsm-expected-version": "1"})
    assert ok["accepted"] and ok["version"] == 2
    stale = driver.send("bankaccount", "deposit", key, {"amount": 1}, {**ANN, "x-esfsm-expected-version": "1"})
    assert (stale["code"], stale["message"]) == (409, "expected version 1, but the entity is at version 2")
    assert driver.state("bankaccount", key)["version"] == 2


@pytest.mark.parametrize("value", ["-1", "one", "1.5", ""])
def test_malformed_expected_version_is_400(driver: Driver, value: str) -> None:
    reply = driver.send(
        "bankaccount",
        "open_account",
        new_key(),
        {"owner": "ann", "initial_balance": 150},
        {**ANN, "x-esfsm-expected-version": value},
    )
    assert reply["code"] == 400


def test_retried_command_id_is_applied_once_and_answered_the_same(driver: Driver) -> None:
    key = new_key()
    open_account(driver, key)
    headers = {**ANN, "x-esfsm-command-id": "deposit-1"}
    first = driver.send("bankaccount", "deposit", key, {"amount": 10}, headers)
    again = driver.send("bankaccount", "deposit", key, {"amount": 10}, headers)
    assert first == again
    assert driver.state("bankaccount", key)["data"]["balance"] == 160
    assert len(driver.history("bankaccount", key)) == 2


def test_retried_rejected_command_id_gives_the_same_rejection(driver: Driver) -> None:
    key = new_key()
    open_account(driver, key, 150)
    headers = {**ANN, "x-esfsm-command-id": "w-1"}
    first = driver.send("bankaccount", "withdraw", key, {"amount": 200}, headers)
    driver.send("bankaccount", "deposit", key, {"amount": 100}, ANN)
    again = driver.send("bankaccount", "withdraw", key, {"amount": 200}, headers)
    assert first == again and first["code"] == 422


def test_multi_event_command_emits_all_events_in_order(driver: Driver) -> None:
    key = new_key()
    reply = driver.send("lab", "switch_on", key, {"level": 4})
    assert [e["type"] for e in reply["events"]] == ["switched_on", "level_set"]
    assert [e["aggversion"] for e in reply["events"]] == [1, 2]
    assert driver.state("lab", key)["data"]["level"] == 4 and reply["version"] == 2


def test_conditional_emit_is_skipped_when_false(driver: Driver) -> None:
    key = new_key()
    reply = driver.send("lab", "switch_on", key, {})
    assert [e["type"] for e in reply["events"]] == ["switched_on"]
    assert reply["version"] == 1


def test_now_is_stored_as_rfc3339_in_event_data(driver: Driver) -> None:
    key = new_key()
    reply = driver.send("lab", "switch_on", key, {})
    at = reply["events"][0]["data"]["at"]
    assert at.endswith("Z") and "T" in at
    assert driver.state("lab", key)["data"]["switched_at"] == at


def test_data_schema_violation_is_422_and_writes_nothing(driver: Driver) -> None:
    key = new_key()
    driver.send("lab", "switch_on", key, {})
    reply = driver.send("lab", "set_level", key, {"level": 11})
    assert reply["code"] == 422
    assert reply["errors"][0]["path"] == "/level"
    assert driver.state("lab", key)["version"] == 1


def test_events_are_checked_in_order_against_the_machine(driver: Driver) -> None:
    """finish emits level_set then finished: valid from 'on', so the entity ends 'done'."""
    key = new_key()
    driver.send("lab", "switch_on", key, {"level": 3})
    reply = driver.send("lab", "finish", key, {})
    assert reply["accepted"] and reply["state"] == "done"
    again = driver.send("lab", "set_level", key, {"level": 1})
    assert (again["code"], again["message"]) == (409, "command 'set_level' is not accepted in state 'done'")


def test_failing_expression_is_500_and_writes_nothing(driver: Driver) -> None:
    key = new_key()
    driver.send("lab", "switch_on", key, {})
    reply = driver.send("lab", "annotate", key, {})
    assert reply["code"] == 500
    assert "/commands/annotate/emit/0/data/note" in reply["message"]
    assert driver.state("lab", key)["version"] == 1


def test_state_of_unknown_entity_is_the_initial_state(driver: Driver) -> None:
    key = new_key()
    assert driver.state("bankaccount", key) == {"version": 0, "key": key, "state": "none", "data": {"balance": 0}}


def test_a_float_for_an_integer_field_is_400_not_a_cel_failure(driver: Driver) -> None:
    """JSON Schema would call 10.0 an integer; CEL would then fail on balance + 10.0."""
    key = new_key()
    open_account(driver, key)
    reply = driver.send("bankaccount", "deposit", key, {"amount": 10.0}, ANN)
    assert (reply["code"], reply["errors"][0]["path"]) == (400, "/amount")
