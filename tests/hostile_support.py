"""What the hostile-input suites share: a raw NATS client of the runtime and the wire contract's checks.

The hostile suites (test_hostile_*.py) fuzz the running runtime with hypothesis,
talking to the session's real `esfsm run` process with a raw nats-py client
(and, for header blocks nats-py would never build, with a bare-socket NATS
client). For every request they check the wire contract:

* a reply always comes, within a few seconds (no hung handler);
* the reply is JSON with the right code, and a rejection carries the micro
  error headers with the same code (`Nats-Service-Error-Code`);
* a rejected request never stores an event (the entity's subjects, or the
  whole stream when the key is unusable, are counted before and after);
* afterwards the runtime process is alive and accepts an ordinary command.

Inputs that take the runtime's connection down run against a runtime of their
own (the `isolated` fixture in conftest.py: its own nats-server and `esfsm run`
process), so that a bug there cannot break the rest of the session.

The wire literals (header names, subjects) are spelled out here on purpose:
these suites check the contract, so they do not take its names from esfsm.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors
import yaml
from hypothesis import HealthCheck, settings

from helpers import fresh_key
from nats_support import LoopThread, RuntimeProcess

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
WIRE = settings(
    max_examples=40 * SCALE,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
CHECKER = settings(
    max_examples=120 * SCALE,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)


def fresh(prefix: str = "hx") -> str:
    return fresh_key(prefix)


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

    def request(
        self, subject: str, payload: bytes, headers: dict[str, str] | None, timeout: float = REPLY_TIMEOUT
    ) -> Reply:
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

    def command(
        self, command: str, key: str | None, payload: bytes, timeout: float = REPLY_TIMEOUT, **headers: str
    ) -> Reply:
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
    assert all(
        isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("message"), str)
        for e in body["errors"]
    ), body
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


DEFINITION = yaml.safe_load(BANKACCOUNT.read_text())


@dataclass
class Isolated:
    """A runtime of its own (bankaccount only) on a server of its own, and a raw client of it."""

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
