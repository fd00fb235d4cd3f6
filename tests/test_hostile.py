"""Hostile input, fuzzed with hypothesis: against the running runtime and against the checker.

The runtime part talks to the session's real `esfsm run` process with a raw
nats-py client (and, for header blocks nats-py would never build, with a
bare-socket NATS client). For every request it checks the wire contract:

* a reply always comes, within a few seconds (no hung handler);
* the reply is JSON with the right code, and a rejection carries the micro
  error headers with the same code (`Nats-Service-Error-Code`);
* a rejected request never stores an event (the entity's subjects, or the
  whole stream when the key is unusable, are counted before and after);
* afterwards the runtime process is alive and accepts an ordinary command.

Inputs that take the runtime's connection down run against a runtime of their
own (the `isolated` fixture: its own nats-server and `esfsm run` process), so
that a bug there cannot break the rest of the session.

The checker part throws mutated definitions and YAML-ish text at
`esfsm.project.check_paths` and `esfsm validate`: the answer is always
findings or success (exit 0 or 1), never an exception.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import os
import re
import string
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors
import orjson
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, validators
from nats_support import LoopThread, RuntimeProcess, start_server

from esfsm.cli import main
from esfsm.events import event_to_dict, new_event
from esfsm.project import check_paths

ROOT = Path(__file__).resolve().parent.parent
BANKACCOUNT = ROOT / "definitions" / "bankaccount.yaml"

KEY = "x-ergonats-entity-key"
COMMAND_ID = "x-esfsm-command-id"
EXPECTED_VERSION = "x-esfsm-expected-version"
USER = {"x-username": "ann"}
KEY_RE = re.compile(r"[A-Za-z0-9_=-]{1,128}")
CODES = {400, 403, 404, 409, 422, 500, 503}
COMMANDS = {"open_account", "deposit", "withdraw", "freeze", "unfreeze", "close"}
STREAM = "BANK_EVENTS"
OPEN = b'{"owner": "ann", "initial_balance": 150}'
REPLY_TIMEOUT = 5.0  # seconds: a reply later than this counts as a hung handler

# Enough examples to find something, few enough that the module runs in well under a minute.
# HOSTILE_SCALE=10 multiplies them, for a longer soak.
SCALE = max(1, int(os.environ.get("HOSTILE_SCALE", "1")))
WIRE = settings(max_examples=40 * SCALE, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])
CHECKER = settings(max_examples=120 * SCALE, deadline=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                          HealthCheck.data_too_large, HealthCheck.filter_too_much])


def fresh(prefix: str = "hx") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def valid_key(key: str) -> bool:
    return KEY_RE.fullmatch(key) is not None


_NEWLINES = str.maketrans({"\r": " ", "\n": " "})


def transported(value: str) -> str:
    """A header value as the runtime receives it from nats-py: stripped, CR and LF turned into spaces
    (nats-py does both before sending; the receiving side strips again)."""
    return value.strip().translate(_NEWLINES)


# -- a NATS client on a loop of its own, for synchronous (hypothesis) tests ----------------


@dataclass
class Reply:
    body: Any
    headers: dict[str, str]
    raw: bytes


class NoReply(AssertionError):
    pass


class Wire:
    """One nats-py connection, used from synchronous code through a loop thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = LoopThread()
        self.nc = self.loop.run(nats.connect(url, max_reconnect_attempts=3, reconnect_time_wait=0.2))
        self.js = self.nc.jetstream()

    def close(self) -> None:
        try:
            self.loop.run(self.nc.close(), timeout=5)
        finally:
            self.loop.close()

    def request(self, subject: str, payload: bytes, headers: dict[str, str] | None,
                timeout: float = REPLY_TIMEOUT) -> Reply:
        async def go() -> Reply:
            try:
                msg = await self.nc.request(subject, payload, timeout=timeout, headers=headers)
            except nats.errors.TimeoutError:
                raise NoReply(f"no reply to {subject} within {timeout}s (a hung handler or a lost reply)") from None
            try:
                body = json.loads(msg.data)
            except ValueError as err:
                raise AssertionError(f"the reply is not JSON: {msg.data[:200]!r}") from err
            return Reply(body, dict(msg.headers or {}), msg.data)

        return self.loop.run(go(), timeout=timeout + 10)

    def command(self, command: str, key: str | None, payload: bytes, timeout: float = REPLY_TIMEOUT,
                **headers: str) -> Reply:
        all_headers = {**USER, **headers}
        if key is not None:
            all_headers[KEY] = key
        return self.request(f"bank.cmds.{command}", payload, all_headers, timeout)

    def stored(self, key: str, stream: str = STREAM, events: str = "bank.events") -> int:
        """How many events the stream holds for the entity (key must be a valid key)."""
        assert valid_key(key)

        async def go() -> int:
            info = await self.js.stream_info(stream, subjects_filter=f"{events}.{key}.>")
            return sum((info.state.subjects or {}).values())

        return self.loop.run(go())

    def total(self) -> int:
        async def go() -> int:
            return (await self.js.stream_info(STREAM)).state.messages

        return self.loop.run(go())

    def assert_alive(self, process: RuntimeProcess, timeout: float = REPLY_TIMEOUT) -> None:
        assert process.process is not None and process.process.poll() is None, "the runtime process exited"
        key = fresh("alive")
        reply = self.command("open_account", key, OPEN, timeout=timeout)
        assert reply.body["accepted"] is True, reply.body
        assert self.stored(key) == 1


def check_contract(reply: Reply) -> None:
    """The shape every reply must have (DESIGN.md, the wire contract)."""
    body = reply.body
    assert isinstance(body, dict) and isinstance(body.get("accepted"), bool), body
    assert isinstance(body.get("message"), str) and body["message"], body
    if body["accepted"]:
        assert "Nats-Service-Error-Code" not in reply.headers, reply.headers
        assert isinstance(body["version"], int) and isinstance(body["state"], str), body
        assert isinstance(body["events"], list) and body["events"], body
        return
    assert body.get("code") in CODES, body
    assert isinstance(body.get("errors"), list) and body["errors"], body
    assert all(isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("message"), str)
               for e in body["errors"]), body
    assert reply.headers.get("Nats-Service-Error-Code") == str(body["code"]), (reply.headers, body)
    # Nats-Service-Error says the same as the message; a header may drop what is not printable
    # ASCII, and may cut a long message short.
    header, message = _printable(reply.headers.get("Nats-Service-Error", "")), _printable(body["message"])
    assert header, reply.headers
    if len(body["message"]) <= 200:
        assert header == message, (reply.headers, body)
    else:
        assert message.startswith(header[:100]), (reply.headers, body)


def _printable(text: str) -> str:
    return "".join(c if c.isascii() and c.isprintable() else " " for c in text).strip()


def assert_rejected(reply: Reply, code: int) -> None:
    check_contract(reply)
    assert reply.body["accepted"] is False and reply.body["code"] == code, reply.body


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wire(nats_server: Any, runtime: RuntimeProcess) -> Iterator[Wire]:
    """A raw nats-py client of the session's runtime."""
    client = Wire(nats_server.url)
    yield client
    client.close()


@pytest.fixture
def bank(wire: Wire, runtime: RuntimeProcess) -> Iterator[Wire]:
    """The session's runtime, checked to be alive and answering after the test."""
    yield wire
    wire.assert_alive(runtime)


@pytest.fixture(scope="module")
def isolated_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = start_server(tmp_path_factory.mktemp("hostile-nats"))
    yield server
    server.stop()


@dataclass
class Isolated:
    wire: Wire
    process: RuntimeProcess

    def log_tail(self, lines: int = 12) -> str:
        """The runtime's last log lines, without the projector's retry noise."""
        kept = [line[:400] for line in self.process.log().splitlines() if "logger=esfsm.projector" not in line]
        return "\n".join(kept[-lines:])

    def request(self, payload: bytes, headers: dict[str, str], timeout: float) -> Reply:
        try:
            return self.wire.request("bank.cmds.open_account", payload, headers, timeout)
        except NoReply as err:
            raise NoReply(f"{err}\n--- runtime log ---\n{self.log_tail()}") from None

    def assert_alive(self, timeout: float) -> None:
        try:
            self.wire.assert_alive(self.process, timeout)
        except NoReply as err:
            raise NoReply(f"the runtime stopped answering: {err}\n--- runtime log ---\n{self.log_tail()}") from None


@pytest.fixture
def isolated(isolated_server: Any, tmp_path: Path) -> Iterator[Isolated]:
    """A runtime of its own (bankaccount only) on a server of its own, killed after the test:
    for inputs that may take a runtime's connection down."""
    process = RuntimeProcess(isolated_server.url, paths=[str(BANKACCOUNT)], log=tmp_path / "runtime.log").start()
    client = Wire(isolated_server.url)
    try:
        yield Isolated(client, process)
    finally:
        client.close()
        process.kill()


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
    st.none(), st.booleans(), integers, st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
near_payloads = st.fixed_dictionaries({}, optional={
    "owner": st.one_of(st.text(max_size=12), json_values),
    "initial_balance": st.one_of(integers, json_values),
    "amount": st.one_of(integers, json_values),
    "extra": json_values,
})


DEFINITION = yaml.safe_load(BANKACCOUNT.read_text())
# JSON Schema as the runtime applies it: an integer is an int, 150.0 is not one.
_StrictValidator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", lambda _, value: type(value) is int),
)


def received(value: Any) -> Any:
    """value as the runtime parses it: orjson reads integers past 64 bits as floats."""
    if isinstance(value, dict):
        return {k: received(v) for k, v in value.items()}
    if isinstance(value, list):
        return [received(v) for v in value]
    if type(value) is int and not INT64_MIN <= value < 2**64:
        return float(value)
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
    b"{not json", b'{"amount": "\xff"}', b"\xff\xfe\xfd", b"\xed\xa0\x80", b'"\\ud800"', b"\x00",
    b"NaN", b"Infinity", b"-Infinity", b'{"owner": "a", "initial_balance": NaN}',
    b'{"owner": "a", "initial_balance": Infinity}', b"1e400", b'{"owner": "a", "initial_balance": 1e400}',
    b'{"owner": "a", "initial_balance": -1e400}', b'{"owner": "a", "initial_balance": 0x10}',
    b"[" * 10_000 + b"]" * 10_000, b"{" * 10_000, b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
    b"", b"   ", b"\t\r\n", b"null", b"[]", b'"str"', b"0", b"true", b"{}",
    OPEN + b"x", OPEN + b"\x00", b"\xef\xbb\xbf" + OPEN, OPEN[:-1], b"{'owner': 'a', 'initial_balance': 150}",
    b'{"owner": "a", "initial_balance": 150,}', b'{"owner": "a" "initial_balance": 150}',
    b'{"owner": "\xc3\x28", "initial_balance": 150}', b'{"owner": "a\x01", "initial_balance": 150}',
]


# -- payloads --------------------------------------------------------------------------------


@WIRE
@given(data=st.one_of(st.sampled_from(NOT_JSON), st.binary(max_size=300),
                      st.text(max_size=100).map(lambda t: t.encode("utf-8"))))
def test_payloads_that_are_no_valid_json_object_get_400_and_store_nothing(bank: Wire, data: bytes) -> None:
    assume(not is_open_account_payload(data))
    key = fresh()
    reply = bank.command("open_account", key, data)
    assert_rejected(reply, 400)
    assert bank.stored(key) == 0


@WIRE
@given(command=st.sampled_from(sorted(COMMANDS)), payload=st.one_of(near_payloads, json_values),
       ascii_only=st.booleans())
@example(command="open_account", payload={"owner": "a", "initial_balance": 150.0}, ascii_only=True)
@example(command="open_account", payload={"owner": "a", "initial_balance": 2**70}, ascii_only=True)
@example(command="open_account", payload={"owner": "a", "initial_balance": True}, ascii_only=True)
@example(command="open_account", payload={"owner": "a", "initial_balance": "150"}, ascii_only=True)
@example(command="open_account", payload={"owner": "a", "initial_balance": 99}, ascii_only=True)
@example(command="open_account", payload={"owner": "\U0001f600\x00", "initial_balance": INT64_MAX}, ascii_only=False)
@example(command="deposit", payload={"amount": 1e308}, ascii_only=True)
@example(command="freeze", payload=[], ascii_only=True)
def test_json_payloads_get_the_code_the_definition_calls_for(bank: Wire, command: str, payload: Any,
                                                             ascii_only: bool) -> None:
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
    for command, payload in (("deposit", b'{"amount": 1}'), ("withdraw", b'{"amount": 1}'),
                             ("deposit", b'{"amount": %d}' % INT64_MAX)):
        before = bank.stored(key)
        reply = bank.command(command, key, payload)
        check_contract(reply)
        assert reply.body.get("code") != 500, (command, payload, reply.body)
        assert bank.stored(key) == before + (1 if reply.body["accepted"] else 0)


# -- entity keys and headers -----------------------------------------------------------------

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
    reply = bank.request("bank.cmds.open_account", OPEN, {
        KEY: key, "x-username": f"ann\r\n{KEY}: {evil}\r\nx-username: unauthorized",
    })
    assert reply.body["accepted"] is True, reply.body  # x-username is one odd (authorized) value
    assert reply.body["events"][0]["entitykey"] == key
    assert (bank.stored(key), bank.stored(evil)) == (1, 0)


SPECIAL_HEADERS = {KEY, COMMAND_ID, EXPECTED_VERSION, "x-username", "x-esfsm-test-now"}
header_names = st.text(alphabet=string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~", min_size=1, max_size=20)


@WIRE
@given(extra=st.dictionaries(header_names.filter(lambda n: n.lower() not in SPECIAL_HEADERS),
                             st.text(max_size=40), max_size=20))
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


@pytest.mark.parametrize("value", ["\u00b2", "\u0661\u0662", "\U0001d7d9", "\u00bd", "\u2460"],
                         ids=["superscript-two", "arabic-indic-12", "math-bold-one", "one-half", "circled-one"])
def test_an_expected_version_in_non_ascii_digits_is_a_400(bank: Wire, value: str) -> None:
    """'²'.isdigit() is True but int('²') raises; '١٢' is int 12. Neither is the wire's integer."""
    key = fresh()
    reply = bank.command("open_account", key, OPEN, **{EXPECTED_VERSION: value})
    assert_rejected(reply, 400)
    assert bank.stored(key) == 0


COMMAND_ID_CHARS = st.one_of(st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                             st.sampled_from(list("\x00\x01\x1b\x7f\t\u00a0é\u2028\U0001f600")))


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


# Not " \t\r\n" (nats-py refuses them) nor "\x0b\x0c": those reach the runtime, and have a test of their own
# (test_a_subject_with_a_vertical_tab_or_form_feed_gets_a_reply).
subject_tokens = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters=" \t\r\n.\x0b\x0c"),
    min_size=1, max_size=16,
)


@WIRE
@given(tokens=st.lists(subject_tokens | st.sampled_from(["*", ">", "$SRV", "deposit"]), min_size=1, max_size=3))
@example(tokens=["*"])
@example(tokens=[">"])
@example(tokens=["deposit", "x"])
@example(tokens=["Deposit"])
def test_unknown_commands_get_404(bank: Wire, tokens: list[str]) -> None:
    name = ".".join(tokens)
    assume(name not in COMMANDS)
    before = bank.total()
    reply = bank.request(f"bank.cmds.{name}", OPEN, {**USER, KEY: fresh()})
    assert_rejected(reply, 404)
    assert "unknown command" in reply.body["message"]
    assert bank.total() == before


@pytest.mark.parametrize("char", ["\x0b", "\x0c"], ids=["vertical-tab", "form-feed"])
def test_a_subject_with_a_vertical_tab_or_form_feed_gets_a_reply(isolated: Isolated, char: str) -> None:
    """The server splits protocol lines on space and tab only, so `bank.cmds.a<VT>b` is a valid
    subject to it; nats-py's MSG regex uses \\s, fails to match, raises ProtocolError, and the
    runtime drops its connection (every request in flight is lost) and reconnects."""
    try:
        reply = isolated.wire.request(f"bank.cmds.a{char}b", OPEN, {**USER, KEY: fresh()}, timeout=3)
    except NoReply as err:
        raise NoReply(f"{err}\n--- runtime log ---\n{isolated.log_tail()}") from None
    assert_rejected(reply, 404)
    assert "disconnected" not in isolated.log_tail(), isolated.log_tail()
    isolated.assert_alive(timeout=3)


def test_a_reply_subject_with_a_vertical_tab_does_not_drop_the_runtimes_connection(isolated: Isolated) -> None:
    """The same through the reply subject, which the runtime also reads from the MSG line."""
    async def publish() -> None:
        await isolated.wire.nc.publish("bank.cmds.open_account", OPEN, reply="_HOSTILE.a\x0bb",
                                       headers={**USER, KEY: fresh()})
        await isolated.wire.nc.flush()
        await asyncio.sleep(0.5)

    isolated.wire.loop.run(publish())
    assert "disconnected" not in isolated.log_tail(), isolated.log_tail()
    isolated.assert_alive(timeout=3)


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
    envelope = len(orjson.dumps(event_to_dict(new_event("bankaccount", "account_opened", key, 1,
                                                        {"owner": "", "initial_balance": 150},
                                                        dt.datetime.now(dt.UTC)))))
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


@pytest.mark.parametrize(("headers", "payload"), [
    pytest.param({EXPECTED_VERSION: "9x" * (BIG // 2)}, OPEN, id="expected-version-header"),
    pytest.param({KEY: "k" * BIG}, OPEN, id="entity-key-header"),
    pytest.param({}, b'{"owner": 1, "initial_balance": "' + b"x" * BIG + b'"}', id="schema-error-quotes-value"),
    pytest.param({}, b"[" + b"0," * (BIG // 2) + b"0]", id="schema-error-quotes-payload"),
])
def test_a_rejection_that_quotes_a_big_input_still_gets_a_reply(isolated: Isolated, headers: dict[str, str],
                                                                  payload: bytes) -> None:
    """The runtime quotes the offending value in the message, in errors[].message and in the
    Nats-Service-Error header. A reply past max_payload is refused by nats-py (payload) or, when
    only headers + payload are over, makes the server close the runtime's connection for good."""
    key = fresh()
    before = isolated.wire.total()
    reply = isolated.request(payload, {**USER, KEY: key, **headers}, timeout=3)
    assert_rejected(reply, 400)
    assert isolated.wire.total() == before
    isolated.assert_alive(timeout=3)


# -- header blocks nats-py would never send: a bare-socket client ------------------------------


class RawClient:
    """The NATS protocol by hand: HPUB with any header bytes, replies matched by inbox."""

    def __init__(self) -> None:
        self.replies: dict[str, asyncio.Future[tuple[bytes, bytes]]] = {}
        self.errors: list[str] = []
        self.pongs: asyncio.Queue[None] = asyncio.Queue()

    async def connect(self, url: str) -> RawClient:
        host, port = url.removeprefix("nats://").rsplit(":", 1)
        self.reader, self.writer = await asyncio.open_connection(host, int(port))
        info = await self.reader.readline()
        assert info.startswith(b"INFO ")
        self.writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true,'
                          b'"protocol":1}\r\nSUB _HOSTILE.> 1\r\nPING\r\n')
        self.task = asyncio.create_task(self._read())
        await asyncio.wait_for(self.pongs.get(), 5)
        return self

    async def _read(self) -> None:
        while line := await self.reader.readline():
            if line.startswith(b"PING"):
                self.writer.write(b"PONG\r\n")
            elif line.startswith(b"PONG"):
                self.pongs.put_nowait(None)
            elif line.startswith(b"-ERR"):
                self.errors.append(line.decode(errors="replace"))
            elif line.startswith((b"MSG ", b"HMSG ")):
                parts = line.split()
                header_size = int(parts[-2]) if parts[0] == b"HMSG" else 0
                body = await self.reader.readexactly(int(parts[-1]) + 2)
                future = self.replies.pop(parts[1].decode(), None)
                if future is not None and not future.done():
                    future.set_result((body[:header_size], body[header_size:-2]))

    async def request(self, subject: str, header: bytes, payload: bytes, timeout: float) -> tuple[bytes, bytes]:
        inbox = f"_HOSTILE.{uuid.uuid4().hex}"
        future = self.replies[inbox] = asyncio.get_running_loop().create_future()
        self.writer.write(b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
            subject.encode(), inbox.encode(), len(header), len(header) + len(payload), header, payload))
        await self.writer.drain()
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self.replies.pop(inbox, None)

    async def close(self) -> None:
        self.task.cancel()
        self.writer.close()


def raw_reply(header: bytes, data: bytes) -> Reply:
    headers = {}
    for line in header.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon:
            headers[name.strip().decode()] = value.strip().decode("utf-8", "replace")
    return Reply(json.loads(data), headers, data)


def raw_request(wire: Wire, header: bytes, payload: bytes, timeout: float = REPLY_TIMEOUT) -> Reply | None:
    async def go() -> Reply | None:
        client = await RawClient().connect(wire.url)
        try:
            header_bytes, data = await client.request("bank.cmds.open_account", header, payload, timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            await client.close()
        return raw_reply(header_bytes, data)

    return wire.loop.run(go(), timeout=timeout + 10)


header_lines = st.lists(st.one_of(
    st.binary(max_size=40).filter(lambda b: b"\r\n" not in b),
    st.builds(lambda name, value: name + b":" + value,
              st.sampled_from([KEY.encode(), b"X-Ergonats-Entity-Key", b" " + KEY.encode(), KEY.encode() + b" ",
                               b"x-username", COMMAND_ID.encode(), EXPECTED_VERSION.encode(), b"\xff", b""]),
              st.binary(max_size=30).filter(lambda b: b"\r\n" not in b)),
), max_size=4)


@WIRE
@given(lines=header_lines)
@example(lines=[KEY.encode() + b": b.c"])  # a second key header: the last one counts
@example(lines=[b"", KEY.encode() + b": a.b"])  # an empty line, then more headers
@example(lines=[KEY.encode() + b": \xff\xfe"])
@example(lines=[KEY.encode() + b": a\nb"])
@example(lines=[KEY.encode() + b": k\x00"])
@example(lines=[b"x-username: unauthorized"])
def test_raw_header_blocks_never_store_under_a_bad_key(bank: Wire, lines: list[bytes]) -> None:
    key = fresh()
    header = b"NATS/1.0\r\nx-username: ann\r\n" + KEY.encode() + b": " + key.encode() + b"\r\n"
    header += b"".join(line + b"\r\n" for line in lines) + b"\r\n"
    before = bank.total()
    reply = raw_request(bank, header, OPEN)
    assert reply is not None, f"no reply within {REPLY_TIMEOUT}s to the header block {header!r}"
    check_contract(reply)
    if reply.body["accepted"]:
        stored_key = reply.body["events"][0]["entitykey"]
        assert valid_key(stored_key)
        assert bank.stored(stored_key) >= 1 and bank.total() == before + 1
    else:
        assert bank.total() == before


@pytest.mark.parametrize("header", [b"NATS/1.0", b"\r\n", b"NATS/1.0 \xff\xfe\r\n\r\n",
                                    b"NATS/1.0 503 \xff\r\nx-username: ann\r\n\r\n"],
                         ids=["8-bytes", "crlf-only", "non-utf8-status", "non-utf8-description"])
def test_a_malformed_header_block_does_not_wedge_the_runtime(isolated: Isolated, header: bytes) -> None:
    """nats-py's reader raises on these (IndexError / UnicodeDecodeError in _process_headers) and
    its read loop stops: the runtime then answers nothing until a stale-connection reconnect,
    minutes later. One such message from any client must not take the service down."""
    raw_request(isolated.wire, header, OPEN, timeout=1)  # a reply is welcome, not required
    isolated.assert_alive(timeout=3)


# -- the checker: mutated definitions and YAML-ish text ---------------------------------------

BASE = DEFINITION
DSL_WORDS = ["type", "from", "to", "emit", "event", "data", "rule", "message", "schema", "apply", "in", "if",
             "code", "path", "final", "properties", "required", "$ref", "items", "initial", "states", "commands",
             "events", "nats", "authorize", "initial_data", "replicas", "description", "x-note", "<<"]
CEL = st.one_of(
    st.text(alphabet="cmdataevntkyo.+-*/%()[]{}'\"=<>!&|?:, 0123456789_x", max_size=30),
    st.sampled_from([
        "cmd.amount <= data.balance", "now", "cmd", "data", "meta", "event", "state == 'open'", "key.size() > 1",
        "version + 1", "[1, 2][5]", "{'a': 1}", "1 / 0", "duration('1h')", "timestamp('x')", "cmd.all(x, x)",
        "b'\\xff'", "9223372036854775807 + 1", "'x' * 3", "[[[[[[[[[[1]]]]]]]]]]", "cmd.amount.exists(x, y)",
        "dyn(1)", "type(1) == int", "has(cmd.", "cmd.", "", " ", "\x00", "cmd.no_such_field", "data.nope + 1",
        "event.amount", "meta['x-username']", "now + duration('1s')", "size(cmd)", "cmd.amount in [1, 2]",
    ]),
)
YAML_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=20),
    st.sampled_from(["", " ", "none", "open", "closed", "frozen", "account_opened", "object", "integer", "*", ">",
                     "a.b", "bank.cmds", "${x}", "~", "-", "off", "BANK_EVENTS", "é", "\x00", "\t"]),
)
DSL_VALUES = st.recursive(
    st.one_of(YAML_SCALARS, CEL),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(DSL_WORDS)), children, max_size=3),
    max_leaves=8,
)


def _nodes(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _nodes(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _nodes(value, (*path, index))


def _at(document: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        document = document[part]
    return document


@st.composite
def mutated_definitions(draw: st.DrawFn) -> Any:
    """bankaccount with one to three nodes mutated: deleted, retyped, renamed, garbage inserted, CEL replaced."""
    document = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_nodes(document))))
        node = _at(document, path)
        parent = _at(document, path[:-1]) if path else None
        operation = draw(st.sampled_from(["delete", "replace", "cel", "rename", "insert"]))
        if operation == "insert" or not path:
            if isinstance(node, dict):
                node[draw(st.one_of(st.text(max_size=10), st.sampled_from(DSL_WORDS)))] = draw(DSL_VALUES)
            elif isinstance(node, list):
                node.insert(draw(st.integers(0, len(node))), draw(DSL_VALUES))
        elif operation == "delete":
            del parent[path[-1]]
        elif operation == "replace":
            parent[path[-1]] = draw(DSL_VALUES)
        elif operation == "cel":
            parent[path[-1]] = draw(CEL)
        elif isinstance(parent, dict):  # rename
            parent[draw(st.one_of(st.text(max_size=10), st.sampled_from(DSL_WORDS)))] = parent.pop(path[-1])
    return document


def assert_findings_or_success(path: Path) -> None:
    project = check_paths([path])  # must not raise
    errors = [f for f in project.findings if f.severity == "error"]
    assert project.ok == (not errors)
    if project.ok:
        assert project.aggregates, "a valid definition compiles to an aggregate"
    for finding in project.findings:
        assert finding.line >= 1 and finding.column >= 1 and finding.message


def assert_cli_findings_or_success(path: Path) -> None:
    for fmt in ("text", "json"):
        result = CliRunner().invoke(main, ["validate", "--format", fmt, str(path)])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        assert result.exit_code in (0, 1), result.output
        assert "Traceback" not in result.output and "internal error" not in result.output, result.output
        if fmt == "json":
            assert json.loads(result.stdout)["valid"] == (result.exit_code == 0)


def _write_yaml(tmp_path: Path, document: Any) -> Path | None:
    try:
        text = yaml.safe_dump(document, allow_unicode=True, sort_keys=False)
    except yaml.YAMLError:
        return None
    path = tmp_path / "bankaccount.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@CHECKER
@given(document=mutated_definitions())
def test_mutated_definitions_give_findings_or_success(tmp_path: Path, document: Any) -> None:
    path = _write_yaml(tmp_path, document)
    assume(path is not None)
    assert_findings_or_success(path)


@settings(CHECKER, max_examples=30 * SCALE)
@given(document=mutated_definitions())
def test_validate_on_mutated_definitions_exits_0_or_1(tmp_path: Path, document: Any) -> None:
    path = _write_yaml(tmp_path, document)
    assume(path is not None)
    assert_cli_findings_or_success(path)


LINES = BANKACCOUNT.read_text().splitlines(keepends=True)
YAML_PIECES = list("abcxyz019 :-[]{},'\"&*!|>#%@`?\n\t\\.~<=") + [
    "\u00e9", "\x00", "\ufeff", "\u2028", "\x85", "\x1b", "<<: *a", "&a ", "*a", "!!int ", "!!str ", "!!float ",
    "!!python/object:os.system ", "!custom ", "---\n", "...\n", "? ", "cmd.amount", "{a: ", "[", ".nan", ".inf",
    "0x", "0o", "1e400", "9" * 30, "true", "null", "~", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n",
]
yaml_ish = st.lists(st.sampled_from(YAML_PIECES), max_size=30).map("".join)


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    lines = list(LINES)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(lines)))
        operation = draw(st.sampled_from(["insert", "replace", "delete", "splice", "indent"]))
        if operation == "insert":
            lines.insert(at, draw(yaml_ish) + "\n")
        elif at == len(lines):
            continue
        elif operation == "replace":
            lines[at] = draw(yaml_ish) + "\n"
        elif operation == "delete":
            del lines[at]
        elif operation == "indent":
            lines[at] = " " * draw(st.integers(0, 5)) + lines[at].lstrip(" ")
        else:
            cut = draw(st.integers(0, len(lines[at])))
            lines[at] = lines[at][:cut] + draw(yaml_ish) + lines[at][cut:]
    return "".join(lines)


@CHECKER
@given(text=st.one_of(mutated_text(), yaml_ish, st.text(max_size=200)))
@example(text="[" * 10_000)
@example(text="a:\n" + "".join(" " * i + "- \n" for i in range(2000)))
@example(text="a: &a [*a]")
@example(text="a: !!binary aGVsbG8=")
@example(text="!!float ")  # found by this test: PyYAML's float constructor raised IndexError on ''
@example(text="aggregate: !!int\n")
def test_yaml_ish_text_gives_findings_or_success(tmp_path: Path, text: str) -> None:
    path = tmp_path / "agg.yaml"
    path.write_text(text, encoding="utf-8")
    assert_findings_or_success(path)


@settings(CHECKER, max_examples=30 * SCALE)
@given(raw=st.one_of(mutated_text().map(lambda t: t.encode("utf-8")), st.binary(max_size=200)))
def test_validate_on_arbitrary_bytes_exits_0_or_1(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "agg.yaml"
    path.write_bytes(raw)
    assert_cli_findings_or_success(path)


def test_an_invalid_type_in_the_data_schema_with_initial_data_is_a_finding(tmp_path: Path) -> None:
    """Found by the fuzzer: initial_data was checked against a data schema whose `type` is a
    mapping, and the message builder raised TypeError (unhashable type: 'dict')."""
    document = copy.deepcopy(BASE)
    document["data"]["type"] = {}
    path = _write_yaml(tmp_path, document)
    assert path is not None
    assert_findings_or_success(path)
    assert_cli_findings_or_success(path)
    assert not check_paths([path]).ok


def test_strategies_reach_valid_definitions() -> None:
    """The unmutated base is valid, so mutations start from a definition that passes."""
    assert check_paths([BANKACCOUNT]).ok
