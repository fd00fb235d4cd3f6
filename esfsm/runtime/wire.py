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

It uses nats-py internals (`_process_msg`, `_pending`, `_flush_queue`), which
is why pyproject.toml bounds the nats-py version; tests/test_wire_lean.py pins
the behaviour.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.errors import (
    BadSubjectError,
    ConnectionClosedError,
    ConnectionDrainingError,
    MaxPayloadError,
    OutboundBufferLimitError,
)

log = logging.getLogger("esfsm.wire")

# subject, reply, data, headers (None when there are none, or not asked for)
Handler = Callable[[str, str, bytes, "dict[str, str] | None"], None]


def header_block(headers: Mapping[str, str]) -> bytes:
    """A NATS header block. Keys are the runtime's own; values must not hold CR or LF."""
    lines = [b"NATS/1.0\r\n"]
    for key, value in headers.items():
        lines.append(f"{key}: {value.strip()}\r\n".encode())
    lines.append(b"\r\n")
    return b"".join(lines)


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
        original = nc._process_msg
        process_headers = nc._process_headers
        direct = self._direct

        async def process_msg(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
            target = direct.get(sid)
            if target is None:
                await original(sid, subject, reply, data, headers)
                return
            stats = nc.stats
            stats["in_msgs"] += 1
            stats["in_bytes"] += len(data)
            parsed = None
            if headers and (target.parse_headers or not reply):  # status messages come without a reply
                parsed = await process_headers(headers)
            try:
                target.handler(subject.decode(errors="replace"), reply.decode(errors="replace"), data, parsed)
            except Exception:  # a handler bug must not stop the connection's read loop
                log.exception("handling a message on %r failed", subject[:200])

        nc._process_msg = process_msg  # type: ignore[method-assign]

    async def subscribe(self, subject: str, handler: Handler, queue: str = "",
                        parse_headers: bool = True) -> Subscription:
        """Subscribe with handler called straight from the read loop (it must not block)."""
        sub = await self.nc.subscribe(subject, queue=queue, cb=_unused)
        self._direct[sub._id] = _Direct(handler, parse_headers)
        return sub

    def route(self, sub: Subscription, handler: Handler, parse_headers: bool = True) -> None:
        """Send the messages of an existing subscription (say, a micro endpoint's) to handler."""
        self._direct[sub._id] = _Direct(handler, parse_headers)

    def unroute(self, sub: Subscription) -> None:
        self._direct.pop(sub._id, None)

    async def unsubscribe(self, sub: Subscription) -> None:
        self.unroute(sub)
        await sub.unsubscribe()

    def publish(self, subject: str, payload: bytes, reply: str = "", headers: bytes = b"") -> None:
        """Queue one message for nats-py's flusher; raises what nats-py's publish raises
        when it cannot be sent (closed, draining, disconnected, too large)."""
        nc = self.nc
        if not subject:
            raise BadSubjectError
        if nc.is_closed:
            raise ConnectionClosedError
        if nc.is_draining_pubs:
            raise ConnectionDrainingError
        if not nc.is_connected:  # never buffered for later: the caller reports "nothing sent"
            raise OutboundBufferLimitError
        if len(payload) > nc._max_payload:
            raise MaxPayloadError
        if headers:
            command = b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
                subject.encode(), reply.encode(), len(headers), len(headers) + len(payload), headers, payload)
        else:
            command = b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply.encode(), len(payload), payload)
        self.write(command, len(payload))

    def publish_many(self, messages: list[tuple[str, bytes]]) -> None:
        """Several header-less messages with no reply subject in one write (acks, say)."""
        if not messages:
            return
        self.publish(messages[0][0], messages[0][1])  # the checks, once
        if len(messages) > 1:
            self.write(b"".join(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload)
                                for subject, payload in messages[1:]),
                       sum(len(payload) for _, payload in messages[1:]), len(messages) - 1)

    def write(self, command: bytes, payload_size: int, count: int = 1) -> None:
        nc = self.nc
        nc._pending.append(command)
        nc._pending_data_size += len(command)
        nc.stats["out_msgs"] += count
        nc.stats["out_bytes"] += payload_size
        queue = nc._flush_queue
        if queue is not None and queue.empty():  # wake nats-py's flusher, as its publish does
            queue.put_nowait(asyncio.get_running_loop().create_future())


async def _unused(msg: Any) -> None:  # pragma: no cover - direct subscriptions never reach it
    log.warning("a message on %s took the slow path", getattr(msg, "subject", "?"))


_WIRES: weakref.WeakKeyDictionary[Client, Wire] = weakref.WeakKeyDictionary()


def wire(nc: Client) -> Wire:
    """The Wire of nc (made on first use)."""
    found = _WIRES.get(nc)
    if found is None:
        found = _WIRES[nc] = Wire(nc)
    return found
