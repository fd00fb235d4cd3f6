"""Header blocks nats-py would never send, written by a bare-socket NATS client: any header
bytes (HPUB), and malformed blocks that once stopped nats-py's read loop in the runtime.

The contract every reply is held to is in hostile_support.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hostile_support import (
    COMMAND_ID,
    EXPECTED_VERSION,
    KEY,
    OPEN,
    REPLY_TIMEOUT,
    WIRE,
    Isolated,
    Reply,
    Wire,
    check_contract,
    fresh,
    valid_key,
)


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
        self.writer.write(
            b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true,'
            b'"protocol":1}\r\nSUB _HOSTILE.> 1\r\nPING\r\n'
        )
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
        self.writer.write(
            b"HPUB %s %s %d %d\r\n%s%s\r\n"
            % (subject.encode(), inbox.encode(), len(header), len(header) + len(payload), header, payload)
        )
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
        except TimeoutError:
            return None
        finally:
            await client.close()
        return raw_reply(header_bytes, data)

    return wire.loop.run(go(), timeout=timeout + 10)


header_lines = st.lists(
    st.one_of(
        st.binary(max_size=40).filter(lambda b: b"\r\n" not in b),
        st.builds(
            lambda name, value: name + b":" + value,
            st.sampled_from(
                [
                    KEY.encode(),
                    b"X-Ergonats-Entity-Key",
                    b" " + KEY.encode(),
                    KEY.encode() + b" ",
                    b"x-username",
                    COMMAND_ID.encode(),
                    EXPECTED_VERSION.encode(),
                    b"\xff",
                    b"",
                ]
            ),
            st.binary(max_size=30).filter(lambda b: b"\r\n" not in b),
        ),
    ),
    max_size=4,
)


@WIRE
@given(lines=header_lines)
@example(lines=[KEY.encode() + b": b.c"])  # a second key header: a 400
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


@pytest.mark.parametrize(
    "header",
    [b"NATS/1.0", b"\r\n", b"NATS/1.0 \xff\xfe\r\n\r\n", b"NATS/1.0 503 \xff\r\nx-username: ann\r\n\r\n"],
    ids=["8-bytes", "crlf-only", "non-utf8-status", "non-utf8-description"],
)
def test_a_malformed_header_block_does_not_wedge_the_runtime(isolated: Isolated, header: bytes) -> None:
    """nats-py's reader raises on these (IndexError / UnicodeDecodeError in _process_headers) and
    its read loop stops: the runtime then answers nothing until a stale-connection reconnect,
    minutes later. One such message from any client must not take the service down."""
    raw_request(isolated.wire, header, OPEN, timeout=1)  # a reply is welcome, not required
    isolated.assert_alive(timeout=3)


@pytest.mark.parametrize("second", [b"b", b"a"])
def test_two_entity_key_headers_are_a_400_acting_on_neither(bank: Wire, second: bytes) -> None:
    """The runtime used to act on the last of two key headers, silently."""
    key = fresh()
    header = (
        b"NATS/1.0\r\nx-username: ann\r\n"
        + KEY.encode()
        + b": "
        + key.encode()
        + b"\r\n"
        + KEY.encode()
        + b": "
        + key.encode()
        + second
        + b"\r\n\r\n"
    )
    before = bank.total()
    reply = raw_request(bank, header, OPEN)
    assert reply is not None
    check_contract(reply)
    assert reply.body["code"] == 400 and f"more than one {KEY} header" in reply.body["message"], reply.body
    assert bank.total() == before
