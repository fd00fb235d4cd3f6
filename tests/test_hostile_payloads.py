"""Hostile payloads on the command subjects: bytes that are no JSON, JSON the definition must refuse
with the right code, deep nesting, integers past 64 bits, and sizes up to and past max_payload.

The contract every reply is held to is in hostile_support.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import nats
import nats.errors
import orjson
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, validators

from hostile_support import (
    COMMANDS,
    DEFINITION,
    EXPECTED_VERSION,
    KEY,
    OPEN,
    USER,
    WIRE,
    Isolated,
    Wire,
    assert_rejected,
    check_contract,
    fresh,
)
from nats_support import RuntimeProcess

from esfsm.events import event_to_dict, new_event

# -- strategies --------------------------------------------------------------------------------

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def int64(value: Any) -> bool:
    return type(value) is int and INT64_MIN <= value <= INT64_MAX


# Integers a JSON client may send. Those past the unsigned 64-bit range reach the runtime
# as floats (orjson), so "not an integer" is the right answer for them; [2**63, 2**64) has
# its own test (test_integers_past_int64_never_give_a_500).
integers = st.one_of(
    st.integers(INT64_MIN, INT64_MAX),
    st.sampled_from([0, 1, -1, 99, 100, 101, INT64_MAX, INT64_MIN, 2**64, 2**70, -(2**63) - 1, -(2**70), 10**30]),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    integers,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
near_payloads = st.fixed_dictionaries(
    {},
    optional={
        "owner": st.one_of(st.text(max_size=12), json_values),
        "initial_balance": st.one_of(integers, json_values),
        "amount": st.one_of(integers, json_values),
        "extra": json_values,
    },
)


# JSON Schema as the runtime applies it: an integer is an int, 150.0 is not one.
_StrictValidator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", lambda _, value: type(value) is int),
)


def received(value: Any) -> Any:
    """value as the runtime parses it: exactly, integers past 64 bits included (orjson alone
    read those as floats, so a schema without a type let 2**64 through as 1.8e19)."""
    return value


def _ints(value: Any) -> Iterator[int]:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            yield from _ints(item)
    elif type(value) is int:
        yield value


def expected_code(command: str, payload: Any) -> int | None:
    """What bankaccount must answer for a fresh entity (state none, user ann); None = accepted.
    The payload is checked against the command's schema as the definition writes it."""
    payload = received(payload)
    if not all(int64(i) for i in _ints(payload)):  # a CEL integer is 64-bit
        return 400
    schema = DEFINITION["commands"][command].get("schema", {"type": "object"})
    if not _StrictValidator(schema).is_valid(payload):
        return 400
    if command == "open_account":
        return 422 if payload["initial_balance"] < 100 else None  # its rule: at least 100
    return 409  # every other command: not accepted in state none


def is_open_account_payload(data: bytes) -> bool:
    """Whether data could be a valid open_account payload (by the strictest JSON reading)."""

    def refuse(token: str) -> None:
        raise ValueError(token)

    try:
        payload = json.loads(data.decode("utf-8"), parse_constant=refuse)
    except (ValueError, RecursionError):
        return False
    return expected_code("open_account", payload) != 400


NOT_JSON = [
    b"{not json",
    b'{"amount": "\xff"}',
    b"\xff\xfe\xfd",
    b"\xed\xa0\x80",
    b'"\\ud800"',
    b"\x00",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b'{"owner": "a", "initial_balance": NaN}',
    b'{"owner": "a", "initial_balance": Infinity}',
    b"1e400",
    b'{"owner": "a", "initial_balance": 1e400}',
    b'{"owner": "a", "initial_balance": -1e400}',
    b'{"owner": "a", "initial_balance": 0x10}',
    b"[" * 10_000 + b"]" * 10_000,
    b"{" * 10_000,
    b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
    b"",
    b"   ",
    b"\t\r\n",
    b"null",
    b"[]",
    b'"str"',
    b"0",
    b"true",
    b"{}",
    OPEN + b"x",
    OPEN + b"\x00",
    b"\xef\xbb\xbf" + OPEN,
    OPEN[:-1],
    b"{'owner': 'a', 'initial_balance': 150}",
    b'{"owner": "a", "initial_balance": 150,}',
    b'{"owner": "a" "initial_balance": 150}',
    b'{"owner": "\xc3\x28", "initial_balance": 150}',
    b'{"owner": "a\x01", "initial_balance": 150}',
]


# -- payloads --------------------------------------------------------------------------------


@WIRE
@given(
    data=st.one_of(
        st.sampled_from(NOT_JSON), st.binary(max_size=300), st.text(max_size=100).map(lambda t: t.encode("utf-8"))
    )
)
def test_payloads_that_are_no_valid_json_object_get_400_and_store_nothing(bank: Wire, data: bytes) -> None:
    assume(not is_open_account_payload(data))
    key = fresh()
    reply = bank.command("open_account", key, data)
    assert_rejected(reply, 400)
    assert bank.stored(key) == 0


@WIRE
@given(
    command=st.sampled_from(sorted(COMMANDS)), payload=st.one_of(near_payloads, json_values), ascii_only=st.booleans()
)
@example(command="open_account", payload={"owner": "a", "initial_balance": 150.0}, ascii_only=True)
@example(command="open_account", payload={"owner": "a", "initial_balance": 2**70}, ascii_only=True)
@example(command="open_account", payload={"owner": "a", "initial_balance": True}, ascii_only=True)
@example(command="open_account", payload={"owner": "a", "initial_balance": "150"}, ascii_only=True)
@example(command="open_account", payload={"owner": "a", "initial_balance": 99}, ascii_only=True)
@example(command="open_account", payload={"owner": "\U0001f600\x00", "initial_balance": INT64_MAX}, ascii_only=False)
@example(command="deposit", payload={"amount": 1e308}, ascii_only=True)
@example(command="close", payload={"initial_balance": -(2**63) - 1}, ascii_only=False)  # 19 digits
@example(command="freeze", payload=[], ascii_only=True)
def test_json_payloads_get_the_code_the_definition_calls_for(
    bank: Wire, command: str, payload: Any, ascii_only: bool
) -> None:
    key = fresh()
    body = json.dumps(payload, ensure_ascii=ascii_only, allow_nan=False).encode()
    reply = bank.command(command, key, body)
    check_contract(reply)
    code = expected_code(command, payload)
    if code is None:
        assert reply.body["accepted"] is True, reply.body
        assert (reply.body["version"], reply.body["state"]) == (1, "open")
        event = reply.body["events"][0]
        assert event["entitykey"] == key
        assert event["data"] == {"owner": payload["owner"], "balance": payload["initial_balance"]}
        assert bank.stored(key) == 1
    else:
        assert_rejected(reply, code)
        assert bank.stored(key) == 0


@pytest.mark.parametrize("depth", [10, 100, 300, 400, 600, 1000, 1023, 1024, 1025, 10_000])
def test_deeply_nested_payloads_get_400_not_500(bank: Wire, runtime: RuntimeProcess, depth: int) -> None:
    """A nesting depth orjson accepts (up to 1024) must not blow Python's stack in the runtime."""
    nested = b"[" * depth + b"]" * depth
    key = fresh()
    # owner must be a string: 400 at any depth (too deep to parse, or the wrong type).
    reply = bank.command("open_account", key, b'{"owner": ' + nested + b', "initial_balance": 150}')
    assert_rejected(reply, 400)
    # lab's annotate allows extra properties: too deep (400), or fine and then not accepted in state off (409).
    reply = bank.request("lab.cmds.annotate", b'{"note": "n", "junk": ' + nested + b"}", {KEY: key})
    check_contract(reply)
    assert reply.body["accepted"] is False and reply.body["code"] in (400, 409), reply.body
    assert bank.stored(key) == 0 and bank.stored(key, "LAB_EVENTS", "lab.events") == 0


@pytest.mark.parametrize("balance", [INT64_MAX, 2**63, 2**64 - 1])
def test_integers_past_int64_never_give_a_500(bank: Wire, balance: int) -> None:
    """An integer JSON allows must never make the definition fail to evaluate (a 500) later on:
    either it is refused up front (400) or the account it opens keeps working."""
    key = fresh()
    opened = bank.command("open_account", key, b'{"owner": "a", "initial_balance": %d}' % balance)
    check_contract(opened)
    assert opened.body.get("code") != 500, opened.body
    if not opened.body["accepted"]:
        assert bank.stored(key) == 0
        return
    for command, payload in (
        ("deposit", b'{"amount": 1}'),
        ("withdraw", b'{"amount": 1}'),
        ("deposit", b'{"amount": %d}' % INT64_MAX),
    ):
        before = bank.stored(key)
        reply = bank.command(command, key, payload)
        check_contract(reply)
        assert reply.body.get("code") != 500, (command, payload, reply.body)
        assert bank.stored(key) == before + (1 if reply.body["accepted"] else 0)


# -- payload size ----------------------------------------------------------------------------


def _header_block(headers: dict[str, str]) -> int:
    """The size of the header block nats-py sends for headers."""
    return len(b"NATS/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n")


def test_payloads_at_and_above_max_payload(bank: Wire, nats_server: Any, runtime: RuntimeProcess) -> None:
    limit = bank.nc.max_payload
    assert limit > 0
    key = fresh()
    headers = {**USER, KEY: key}

    # Above the limit the client refuses to send.
    with pytest.raises(nats.errors.MaxPayloadError):
        bank.request("bank.cmds.open_account", b"x" * (limit + 1), headers)

    # Exactly at the limit (headers included) the runtime answers: not JSON.
    at_limit = limit - _header_block(headers)
    assert_rejected(bank.request("bank.cmds.open_account", b" " * (at_limit - 1) + b"x", headers), 400)

    # A valid command whose event cannot fit in one message: a 400, and nothing stored. Also
    # when the event alone would fit as a payload but not with its headers (~250 B): the server
    # would close the runtime's connection for that, so it is never sent.
    prefix, suffix = b'{"owner": "', b'", "initial_balance": 150}'
    envelope = len(
        orjson.dumps(
            event_to_dict(
                new_event(
                    "bankaccount",
                    "account_opened",
                    key,
                    1,
                    {"owner": "", "initial_balance": 150},
                    dt.datetime.now(dt.UTC),
                )
            )
        )
    )
    for event_size in (limit + 100, limit - 100, limit - 200):
        body = prefix + b"a" * (event_size - envelope) + suffix
        assert len(body) <= at_limit
        reply = bank.request("bank.cmds.open_account", body, headers)
        check_contract(reply)
        assert reply.body["accepted"] is False and reply.body["code"] == 400, reply.body
        assert "max_payload" in reply.body["message"]
        assert bank.stored(key) == 0
        bank.assert_alive(runtime)

    # nats-py checks only the payload against the limit; with headers on top the SERVER
    # refuses and closes that client's connection. The runtime is not affected.
    async def over_with_headers() -> bool:
        nc = await nats.connect(nats_server.url, max_reconnect_attempts=0, allow_reconnect=False)
        try:
            await nc.request("bank.cmds.open_account", b"x" * (at_limit + 1), headers=headers, timeout=2)
        except Exception:  # the server closed the connection under the request
            pass
        await asyncio.sleep(0.2)
        closed = nc.is_closed or not nc.is_connected
        await nc.close()
        return closed

    assert bank.loop.run(over_with_headers())
    assert bank.stored(key) == 0
    bank.assert_alive(runtime)


# These take a runtime's connection down (or lose the reply), so each runs on a runtime of its own.
BIG = 400_000  # well under max_payload, but a reply quoting it three times is not


@pytest.mark.parametrize(
    ("headers", "payload"),
    [
        pytest.param({EXPECTED_VERSION: "9x" * (BIG // 2)}, OPEN, id="expected-version-header"),
        pytest.param({KEY: "k" * BIG}, OPEN, id="entity-key-header"),
        pytest.param({}, b'{"owner": 1, "initial_balance": "' + b"x" * BIG + b'"}', id="schema-error-quotes-value"),
        pytest.param({}, b"[" + b"0," * (BIG // 2) + b"0]", id="schema-error-quotes-payload"),
    ],
)
def test_a_rejection_that_quotes_a_big_input_still_gets_a_reply(
    isolated: Isolated, headers: dict[str, str], payload: bytes
) -> None:
    """The runtime quotes the offending value in the message, in errors[].message and in the
    Nats-Service-Error header. A reply past max_payload is refused by nats-py (payload) or, when
    only headers + payload are over, makes the server close the runtime's connection for good."""
    key = fresh()
    before = isolated.wire.total()
    reply = isolated.request(payload, {**USER, KEY: key, **headers}, timeout=3)
    assert_rejected(reply, 400)
    assert isolated.wire.total() == before
    isolated.assert_alive(timeout=3)
