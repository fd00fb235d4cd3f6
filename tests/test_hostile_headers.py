"""Hostile headers on the command subjects: entity keys, header injection, unrelated headers,
the test clock, x-esfsm-expected-version and x-esfsm-command-id.

The contract every reply is held to is in hostile_support.py.
"""

from __future__ import annotations

import string
import uuid

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hostile_support import (
    COMMAND_ID,
    EXPECTED_VERSION,
    KEY,
    OPEN,
    USER,
    WIRE,
    Wire,
    assert_rejected,
    check_contract,
    fresh,
    transported,
    valid_key,
)

# -- entity keys -----------------------------------------------------------------------------

HOSTILE_CHARS = list(". *>\t\r\n\x00\x0b\x0c\x1c\x7f\x85\u00a0\u2028\u3000/\\:$#%+~éü\U0001f600") + list("aZ09_=-")
hostile_text = st.text(alphabet=st.sampled_from(HOSTILE_CHARS), max_size=12)


@WIRE
@given(left=hostile_text, right=hostile_text, fresh_core=st.booleans())
@example(left="", right="", fresh_core=False)  # an empty key
@example(left=".", right="", fresh_core=True)
@example(left="", right="*", fresh_core=True)
@example(left=">", right="", fresh_core=False)
@example(left="a b", right="", fresh_core=True)
@example(left="\t", right="\t", fresh_core=True)  # stripped: a valid key
@example(left="é", right="", fresh_core=True)
@example(left="", right="\r\nx-ergonats-entity-key: evil", fresh_core=True)  # header injection
@example(left="a" * 117, right="", fresh_core=True)  # 129 characters
@example(left="a" * 116, right="", fresh_core=True)  # 128 characters: valid
@example(left="a" * 10_000, right="", fresh_core=True)
def test_entity_keys_are_used_only_when_valid(bank: Wire, left: str, right: str, fresh_core: bool) -> None:
    core = uuid.uuid4().hex[:12] if fresh_core else ""
    key = left + core + right
    effective = transported(key)
    before = bank.total()
    reply = bank.command("open_account", key, OPEN)
    check_contract(reply)
    if valid_key(effective) and core:  # a key made valid by stripping white space is the stripped key
        assert reply.body["accepted"] is True, reply.body
        assert reply.body["events"][0]["entitykey"] == effective
        assert bank.stored(effective) == 1
    elif valid_key(effective):  # no fresh part: the key may be in use already (409) or not
        assert reply.body["accepted"] or reply.body["code"] == 409, reply.body
    else:
        assert_rejected(reply, 400)
        assert "entity key" in reply.body["message"]
        assert bank.total() == before


def test_a_missing_key_header_is_a_400(bank: Wire) -> None:
    before = bank.total()
    assert_rejected(bank.command("open_account", None, OPEN), 400)
    assert bank.total() == before


def test_header_injection_through_a_value_stays_in_that_value(bank: Wire) -> None:
    key, evil = fresh(), fresh("evil")
    reply = bank.request(
        "bank.cmds.open_account",
        OPEN,
        {
            KEY: key,
            "x-username": f"ann\r\n{KEY}: {evil}\r\nx-username: unauthorized",
        },
    )
    assert reply.body["accepted"] is True, reply.body  # x-username is one odd (authorized) value
    assert reply.body["events"][0]["entitykey"] == key
    assert (bank.stored(key), bank.stored(evil)) == (1, 0)


SPECIAL_HEADERS = {KEY, COMMAND_ID, EXPECTED_VERSION, "x-username", "x-esfsm-test-now"}
header_names = st.text(alphabet=string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~", min_size=1, max_size=20)


@WIRE
@given(
    extra=st.dictionaries(
        header_names.filter(lambda n: n.lower() not in SPECIAL_HEADERS), st.text(max_size=40), max_size=20
    )
)
@example(extra={f"x-noise-{i}": "v" * 50 for i in range(2_000)})
@example(extra={"X-Username": "unauthorized", "X-Ergonats-Entity-Key": "a.b"})  # header names are case-sensitive
def test_unrelated_headers_change_nothing(bank: Wire, extra: dict[str, str]) -> None:
    key = fresh()
    reply = bank.request("bank.cmds.open_account", OPEN, {**extra, **USER, KEY: key})
    check_contract(reply)
    assert reply.body["accepted"] is True, reply.body
    assert bank.stored(key) == 1


def test_a_test_clock_header_is_ignored_by_a_production_runtime(bank: Wire) -> None:
    key = fresh()
    reply = bank.command("open_account", key, OPEN, **{"x-esfsm-test-now": "not a time \u00b2"})
    assert reply.body["accepted"] is True, reply.body
    assert bank.stored(key) == 1


EXPECTED_VERSION_CHARS = list("0123456789 +-.eExX_\t\u00a0é")


@WIRE
@given(value=st.text(alphabet=st.sampled_from(EXPECTED_VERSION_CHARS), max_size=24))
@example(value="")
@example(value="-1")
@example(value="1.0")
@example(value="0x0")
@example(value="+0")
@example(value=" 0 ")
@example(value="00")
@example(value="9" * 18)
@example(value="9" * 19)
@example(value="99999999999999999999999999")
def test_a_malformed_expected_version_is_a_400(bank: Wire, value: str) -> None:
    key = fresh()
    reply = bank.command("open_account", key, OPEN, **{EXPECTED_VERSION: value})
    check_contract(reply)
    effective = transported(value)
    if effective.isascii() and effective.isdigit() and len(effective) <= 18:
        if int(effective) == 0:
            assert reply.body["accepted"] is True, reply.body
            assert bank.stored(key) == 1
        else:
            assert_rejected(reply, 409)
            assert bank.stored(key) == 0
    else:
        assert_rejected(reply, 400)
        assert EXPECTED_VERSION in reply.body["message"]
        assert bank.stored(key) == 0


@pytest.mark.parametrize(
    "value",
    ["\u00b2", "\u0661\u0662", "\U0001d7d9", "\u00bd", "\u2460"],
    ids=["superscript-two", "arabic-indic-12", "math-bold-one", "one-half", "circled-one"],
)
def test_an_expected_version_in_non_ascii_digits_is_a_400(bank: Wire, value: str) -> None:
    """'²'.isdigit() is True but int('²') raises; '١٢' is int 12. Neither is the wire's integer."""
    key = fresh()
    reply = bank.command("open_account", key, OPEN, **{EXPECTED_VERSION: value})
    assert_rejected(reply, 400)
    assert bank.stored(key) == 0


COMMAND_ID_CHARS = st.one_of(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E),
    st.sampled_from(list("\x00\x01\x1b\x7f\t\u00a0é\u2028\U0001f600")),
)


@WIRE
@given(value=st.text(alphabet=COMMAND_ID_CHARS, max_size=40) | st.integers(250, 262).map(lambda n: "c" * n))
@example(value="")
@example(value=" ")
@example(value="c" * 256)
@example(value="c" * 257)
@example(value="a\r\nx-ergonats-entity-key: evil")
def test_command_ids_are_checked_and_a_retry_is_applied_once(bank: Wire, value: str) -> None:
    key = fresh()
    first = bank.command("open_account", key, OPEN, **{COMMAND_ID: value})
    check_contract(first)
    effective = transported(value)
    if 0 < len(effective) <= 256 and effective.isascii() and effective.isprintable():
        assert first.body["accepted"] is True, first.body
        again = bank.command("open_account", key, OPEN, **{COMMAND_ID: value})
        assert again.body == first.body
        assert bank.stored(key) == 1
    else:
        assert_rejected(first, 400)
        assert COMMAND_ID in first.body["message"]
        assert bank.stored(key) == 0
