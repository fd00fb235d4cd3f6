"""A lean path through nats-py for the messages the runtime sends and receives per command.

nats-py hands every incoming message to a subscription through a `Msg` object,
a queue and a task per subscription, and builds every outgoing one through
header validation and an awaited flush. Per command the runtime pays that for
the request, the append, its ack, the reply and the snapshot writer's delivery
and ack — most of its CPU. `Wire` keeps nats-py for everything else (connect,
reconnect and resubscribe, TLS, auth, PING/PONG, flushing) and adds:

* direct subscriptions: nats-py parses the message, then a plain function gets
  (subject, reply, data, headers) at once, with no `Msg`, queue or task;
* `publish`: the protocol line built in one step and queued for nats-py's own
  flusher, without awaiting anything.

The runtime's own connections (connection.py) also read with `LeanParser`:
nats-py's parser deletes each message from the front of its buffer (moving
the rest of a read each time) and matches every control line against
regexes; this one walks the buffer with an offset and trims it once per read.

It uses nats-py internals (how a message is processed, the pending buffer and
its flusher, the parser's state) through esfsm/seam.py only, which is why
pyproject.toml bounds the nats-py version; tests/test_seam.py checks that the
internals are there, tests/test_wire_lean.py pins the behaviour.
"""

from __future__ import annotations

import json
import logging
import re
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.errors import (
    BadSubjectError,
    ConnectionClosedError,
    ConnectionDrainingError,
    MaxPayloadError,
    OutboundBufferLimitError,
    ProtocolError,
)
from nats.protocol.parser import AWAITING_CONTROL_LINE, AWAITING_MSG_PAYLOAD, Parser

from esfsm import seam
from esfsm.contract import KEY_HEADER

log = logging.getLogger("esfsm.wire")

# subject, reply, data, headers (None when there are none, or not asked for). The reply is
# as NATS delivered it: bytes that are not UTF-8 stay as surrogate escapes, so that publish
# sends an answer to exactly that subject.
Handler = Callable[[str, str, bytes, "dict[str, str] | None"], None]


def header_block(headers: Mapping[str, str]) -> bytes:
    """A NATS header block. Keys are the runtime's own; values must not hold CR or LF."""
    lines = [b"NATS/1.0\r\n"]
    for key, value in headers.items():
        lines.append(f"{key}: {value.strip()}\r\n".encode())
    lines.append(b"\r\n")
    return b"".join(lines)


def header_lines(block: bytes) -> dict[str, str] | None:
    """The headers of a block without a status line, parsed as nats-py does
    (`Client._parse_header_lines` after the version line), without its awaits; a
    repeated entity-key header is marked (see duplicate_header)."""
    out: dict[str, str] = {}
    for line in block[10:].split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if key and len(key.split()) != 1:  # whitespace inside the name
            continue
        if key in out and key == KEY_HEADER:
            _mark_duplicate(out, key)
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out or None


# A dict key no parsed header has (header names hold no whitespace), whose value names the
# header a request carried more than once; that header's value becomes DUPLICATED, which
# is never a valid entity key: a service that does not look still answers 400.
DUPLICATE_MARK = "esfsm duplicated header"
DUPLICATED = f"(two {KEY_HEADER} headers)"


def _mark_duplicate(headers: dict[str, str], name: str) -> None:
    headers[name] = DUPLICATED
    headers[DUPLICATE_MARK] = name


def duplicate_header(headers: Mapping[str, str] | None) -> str | None:
    """The name of the header that must come once (the entity key) and came more than once
    in the request whose parsed headers these are; None when none did. A request with two
    entity keys must not act on either."""
    return headers.get(DUPLICATE_MARK) if headers else None


def _mark_duplicates_in(block: bytes | None, parsed: dict[str, str] | None) -> dict[str, str] | None:
    """parsed (nats-py's parse of block, which keeps the last of repeated names), with a
    repeated entity-key header marked as header_lines marks it."""
    if parsed and block and KEY_HEADER in parsed:
        name = KEY_HEADER.encode()
        lines = [line for line in block.split(b"\r\n")[1:] if line.partition(b":")[0].strip() == name]
        if len(lines) > 1:
            _mark_duplicate(parsed, KEY_HEADER)
    return parsed


_UNSENDABLE = re.compile(r"[\x00-\x20\x7f\ud800-\udc7f\udd00-\udfff]")


def sendable_subject(subject: str) -> bool:
    """Whether publish can send to subject: any subject NATS delivers (UTF-8, and bytes that
    were not UTF-8 kept as surrogate escapes), except an empty one or one holding a space,
    tab, line break or other ASCII control character (they would break the protocol line,
    or are refused to be safe)."""
    if subject.isascii():
        return subject.isprintable() and " " not in subject and subject != ""
    return _UNSENDABLE.search(subject) is None


def _encoded(subject: str) -> bytes:
    """subject as publish sends it (sendable_subject inlined: it runs for every message)."""
    if subject.isascii():
        if subject.isprintable() and " " not in subject and subject:
            return subject.encode()
    elif _UNSENDABLE.search(subject) is None:
        return subject.encode("utf-8", "surrogateescape")
    raise BadSubjectError


class _Direct:
    __slots__ = ("handler", "parse_headers")

    def __init__(self, handler: Handler, parse_headers: bool) -> None:
        self.handler = handler
        self.parse_headers = parse_headers


class Wire:
    """The lean path on one nats-py connection (see the module docstring); one per client."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._direct: dict[int, _Direct] = {}
        process_headers = seam.header_parser(nc)
        direct = self._direct

        def make(original: seam.MsgProcessor) -> seam.MsgProcessor:
            async def process_msg(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
                if self.dispatch(sid, subject, reply, data, headers):
                    return
                target = direct.get(sid)
                if target is None:
                    await original(sid, subject, reply, data, headers)
                    return
                parsed = _mark_duplicates_in(headers, await process_headers(headers))  # a status line
                self._call(target, subject, reply, data, parsed)

            return process_msg

        seam.intercept_messages(nc, make)
        parser = seam.parser_of(nc)
        if isinstance(parser, LeanParser):  # it dispatches without a coroutine
            parser.lean = self

    def dispatch(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
        """Hand a message to its direct subscription at once; False if it is not one (or
        carries a status line, which nats-py parses)."""
        target = self._direct.get(sid)
        if target is None:
            return False
        parsed = None
        if headers and (target.parse_headers or not reply):  # status messages come without a reply
            if headers[8:9] == b" ":
                return False
            parsed = header_lines(headers)
        self._call(target, subject, reply, data, parsed)
        return True

    def _call(self, target: _Direct, subject: bytes, reply: bytes, data: bytes, parsed: dict[str, str] | None) -> None:
        stats = self.nc.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        try:
            target.handler(subject.decode(errors="replace"), reply.decode(errors="surrogateescape"), data, parsed)
        except Exception:  # a handler bug must not stop the connection's read loop
            log.exception("handling a message on %r failed", subject[:200])

    async def subscribe(
        self, subject: str, handler: Handler, queue: str = "", parse_headers: bool = True
    ) -> Subscription:
        """Subscribe with handler called straight from the read loop (it must not block)."""
        sub = await self.nc.subscribe(subject, queue=queue, cb=_unused)
        self._direct[seam.subscription_id(sub)] = _Direct(handler, parse_headers)
        return sub

    def route(self, sub: Subscription, handler: Handler, parse_headers: bool = True) -> None:
        """Send the messages of an existing subscription (say, a micro endpoint's) to handler."""
        self._direct[seam.subscription_id(sub)] = _Direct(handler, parse_headers)

    def unroute(self, sub: Subscription) -> None:
        self._direct.pop(seam.subscription_id(sub), None)

    async def unsubscribe(self, sub: Subscription) -> None:
        self.unroute(sub)
        await sub.unsubscribe()

    def publish(self, subject: str, payload: bytes, reply: str = "", headers: bytes = b"") -> None:
        """Queue one message for nats-py's flusher; raises what nats-py's publish raises
        when it cannot be sent (closed, draining, disconnected, too large, a subject or
        reply that sendable_subject refuses)."""
        nc = self.nc
        to, back = _encoded(subject), _encoded(reply) if reply else b""
        if nc.is_closed:
            raise ConnectionClosedError
        if nc.is_draining_pubs:
            raise ConnectionDrainingError
        if not nc.is_connected:  # never buffered for later: the caller reports "nothing sent"
            raise OutboundBufferLimitError
        if len(payload) + len(headers) > nc.max_payload:  # the server counts both, and would close us
            raise MaxPayloadError
        if headers:
            command = b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
                to,
                back,
                len(headers),
                len(headers) + len(payload),
                headers,
                payload,
            )
        else:
            command = b"PUB %s %s %d\r\n%s\r\n" % (to, back, len(payload), payload)
        self.write(command, len(payload))

    def publish_many(self, messages: list[tuple[str, bytes]]) -> None:
        """Several header-less messages with no reply subject in one write (acks, say); none
        is sent if one of the subjects cannot be."""
        if not messages:
            return
        rest = [
            b"PUB %s %d\r\n%s\r\n" % (_encoded(subject), len(payload), payload) for subject, payload in messages[1:]
        ]
        self.publish(messages[0][0], messages[0][1])  # the connection's checks, once
        if rest:
            self.write(b"".join(rest), sum(len(payload) for _, payload in messages[1:]), len(rest))

    def write(self, command: bytes, payload_size: int, count: int = 1) -> None:
        nc = self.nc
        seam.enqueue(nc, command)
        nc.stats["out_msgs"] += count
        nc.stats["out_bytes"] += payload_size


async def _unused(msg: Any) -> None:  # pragma: no cover - direct subscriptions never reach it
    log.warning("a message on %s took the slow path", getattr(msg, "subject", "?"))


_GAP = re.compile(rb"[ \t]+")  # how the server separates protocol arguments (not \v or \f)


_MESSAGE_OPS = frozenset((b"MSG ", b"MSG\t", b"HMSG"))  # the first 4 bytes of a message line, upper-cased


class LeanParser(Parser):
    """nats-py's protocol parser, walking its buffer with an offset (see the module docstring).
    Same operations, same calls into the client, same errors."""

    def __init__(self, nc: Any = None) -> None:
        super().__init__(nc)
        self.lean: Wire | None = None  # the Wire of nc, once made: it takes direct subscriptions' messages

    async def parse(self, data: bytes = b"") -> None:
        buf = self.buf
        buf.extend(data)
        view = bytes(buf)  # one copy per read; every slice below is then a single copy
        size = len(view)
        lean, nc = self.lean, self.nc
        pos = 0
        try:
            while pos < size:
                if self.state == AWAITING_MSG_PAYLOAD:
                    end = pos + self.needed
                    if size < end + 2:
                        break
                    split = pos + self.header_needed
                    headers = view[pos:split] if self.header_needed else None
                    payload = view[split:end]
                    pos = end + 2
                    self.state, self.header_needed = AWAITING_CONTROL_LINE, 0
                    arg = self.msg_arg
                    if lean is None or not lean.dispatch(arg["sid"], arg["subject"], arg["reply"], payload, headers):
                        await seam.process_msg(nc, arg["sid"], arg["subject"], arg["reply"], payload, headers)
                        if self.buf is not buf:  # reset by a reconnect meanwhile
                            return
                    continue
                eol = view.find(b"\r\n", pos)
                if eol < 0:  # the rest of the line is still on its way
                    break
                line = view[pos:eol]
                pos = eol + 2
                op = line[:4].upper()
                if op in _MESSAGE_OPS:
                    self._message_line(line)
                    continue
                if line.startswith((b"+OK", b"+ok")):
                    continue
                if op == b"PING":
                    await seam.process_ping(nc)
                elif op == b"PONG":
                    await seam.process_pong(nc)
                elif op == b"INFO":
                    await seam.process_info(nc, json.loads(line[4:].strip().decode()))
                elif line[:4].upper() == b"-ERR":
                    await seam.process_err(nc, line[4:].strip().decode().lower())
                else:
                    raise ProtocolError("nats: unknown protocol")
                if self.buf is not buf:
                    return
        finally:
            if self.buf is buf and pos:
                del buf[:pos]

    def _message_line(self, line: bytes) -> None:
        if b"\t" in line or b"  " in line or line[:1] == b" " or line[-1:] == b" ":
            args = _GAP.split(line.strip(b" \t"))
        else:  # the server's usual single spaces
            args = line.split(b" ")
        headered = len(args[0]) == 4  # HMSG, else MSG
        count = len(args)
        try:
            if headered:
                if count not in (5, 6):
                    raise ValueError(count)
                header_size, total = int(args[-2]), int(args[-1])
                reply = args[3] if count == 6 else b""
            else:
                if count not in (4, 5):
                    raise ValueError(count)
                header_size, total = 0, int(args[-1])
                reply = args[3] if count == 5 else b""
            arg = self.msg_arg
            arg["subject"], arg["sid"], arg["reply"] = args[1], int(args[2]), reply
        except ValueError:
            raise ProtocolError("nats: malformed MSG") from None
        if header_size < 0 or total < header_size:
            raise ProtocolError("nats: malformed MSG")
        self.needed, self.header_needed = total, header_size
        self.state = AWAITING_MSG_PAYLOAD


_WIRES: weakref.WeakKeyDictionary[Client, Wire] = weakref.WeakKeyDictionary()
_T = TypeVar("_T")


def one_per_client(registry: weakref.WeakKeyDictionary[Client, _T], nc: Client, make: Callable[[Client], _T]) -> _T:
    """registry's object for nc, made by make(nc) on first use (and gone with the client)."""
    found = registry.get(nc)
    if found is None:
        found = registry[nc] = make(nc)
    return found


def wire(nc: Client) -> Wire:
    """The Wire of nc (made on first use)."""
    return one_per_client(_WIRES, nc, Wire)
