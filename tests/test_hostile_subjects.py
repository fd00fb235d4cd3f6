"""Hostile subjects: command names no definition has, and subjects (and reply subjects) with
characters the server accepts but nats-py's parser does not.

The contract every reply is held to is in hostile_support.py.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from hostile_support import (
    COMMANDS,
    KEY,
    OPEN,
    USER,
    WIRE,
    Isolated,
    NoReply,
    Wire,
    assert_rejected,
    fresh,
)

# Not " \t\r\n" (nats-py refuses them) nor "\x0b\x0c": those reach the runtime, and have a test of their own
# (test_a_subject_with_a_vertical_tab_or_form_feed_gets_a_reply).
subject_tokens = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters=" \t\r\n.\x0b\x0c"),
    min_size=1,
    max_size=16,
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
        await isolated.wire.nc.publish(
            "bank.cmds.open_account", OPEN, reply="_HOSTILE.a\x0bb", headers={**USER, KEY: fresh()}
        )
        await isolated.wire.nc.flush()
        await asyncio.sleep(0.5)

    isolated.wire.loop.run(publish())
    assert "disconnected" not in isolated.log_tail(), isolated.log_tail()
    isolated.assert_alive(timeout=3)
