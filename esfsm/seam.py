"""Every use esfsm makes of the private parts of nats-py, nats.micro and cloudevents.

Public APIs cannot do three things the runtime needs: take a message straight
from nats-py's read loop and queue a protocol line for its flusher (the lean
path of runtime/wire.py), harden a connection (runtime/connection.py), and
build an event the SDK already validated the shape of (events.py). Each such
access is a small named function here, whose docstring says which internals of
which version it relies on; tests/test_seam.py has one test per private name,
failing with that name and library when an upgrade takes it away, and a test
that no other module of esfsm touches them.

This module imports no nats module (the core imports it, and the core never
imports nats: tests/test_layering.py); nats objects come in as arguments.
Importing it checks that the installed nats-py and cloudevents are versions
these internals were tested with.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator
from importlib import metadata
from typing import Any, TypeVar

from esfsm.errors import EsfsmError

# package -> the (major, minor) series tested; nats.micro ships inside nats-py
TESTED: dict[str, tuple[int, int]] = {"nats-py": (2, 16), "cloudevents": (2, 2)}


class UntestedDependencyError(EsfsmError):
    """An installed dependency is not a version whose internals esfsm was tested with."""

    def __init__(self, package: str, installed: str, tested: tuple[int, int]) -> None:
        self.package, self.installed, self.tested = package, installed, tested
        series = f"{tested[0]}.{tested[1]}.x"
        super().__init__(
            f"{package} {installed} is installed, but esfsm uses internals of {package} (esfsm/seam.py) "
            f"tested with {series} only: install {package}=={tested[0]}.{tested[1]}.*"
        )


def check_version(package: str, installed: str) -> None:
    """UntestedDependencyError unless installed belongs to the series TESTED[package]."""
    tested = TESTED[package]
    found = _SERIES.match(installed)
    if found is None or (int(found[1]), int(found[2])) != tested:
        raise UntestedDependencyError(package, installed, tested)


_SERIES = re.compile(r"(\d+)\.(\d+)(?!\d)")


def check_installed() -> None:
    """Check every installed package of TESTED (one that is not installed fails where imported)."""
    for package in TESTED:
        try:
            installed = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
        check_version(package, installed)


check_installed()


# -- cloudevents 2.2: cloudevents.core.v1.event.CloudEvent -------------------------------------
_E = TypeVar("_E")


def unchecked_event(cls: type[_E], attributes: dict[str, Any], data: Any) -> _E:
    """An instance of cls (cloudevents 2.2's `CloudEvent`) holding attributes and data, without
    the validation its __init__ runs. Relies on __init__ doing nothing but validate and store
    them in `_attributes` and `_data`, which `get_attributes`/`get_data` and the formats read.
    Only for attributes of a shape the SDK has validated before."""
    event = cls.__new__(cls)
    event._attributes = attributes  # type: ignore[attr-defined]
    event._data = data  # type: ignore[attr-defined]
    return event


# -- nats-py 2.16: nats.aio.client.Client, incoming ----------------------------------------------


def install_parser(nc: Any, parser: Any) -> None:
    """Make parser read nc's connection: nats-py 2.16's Client feeds every read to
    `self._ps.parse(data)` and calls `self._ps.reset()` on each (re)connect."""
    nc._ps = parser


def parser_of(nc: Any) -> Any:
    """The protocol parser nc reads with (nats-py 2.16: `Client._ps`)."""
    return nc._ps


def process_msg(nc: Any, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> Awaitable[None]:
    """nats-py 2.16's handling of one MSG/HMSG (`Client._process_msg`): header parsing,
    the subscription's `Msg`, JetStream flow control."""
    return nc._process_msg(sid, subject, reply, data, headers)  # type: ignore[no-any-return]


def process_ping(nc: Any) -> Awaitable[None]:
    """nats-py 2.16's answer to the server's PING (`Client._process_ping`)."""
    return nc._process_ping()  # type: ignore[no-any-return]


def process_pong(nc: Any) -> Awaitable[None]:
    """nats-py 2.16's handling of a PONG (`Client._process_pong`): resolves a flush."""
    return nc._process_pong()  # type: ignore[no-any-return]


def process_info(nc: Any, info: dict[str, Any]) -> Awaitable[None]:
    """nats-py 2.16's handling of an INFO after the connect (`Client._process_info`)."""
    return nc._process_info(info)  # type: ignore[no-any-return]


def process_err(nc: Any, message: str) -> Awaitable[None]:
    """nats-py 2.16's handling of -ERR (`Client._process_err`, lower-cased message)."""
    return nc._process_err(message)  # type: ignore[no-any-return]


MsgProcessor = Callable[[int, bytes, bytes, bytes, "bytes | None"], Awaitable[None]]


def intercept_messages(nc: Any, make: Callable[[MsgProcessor], MsgProcessor]) -> None:
    """nc hands each message to make(original) instead of nats-py 2.16's `Client._process_msg`
    (which its Parser calls as `self.nc._process_msg(sid, subject, reply, payload, headers)`)."""
    nc._process_msg = make(nc._process_msg)


def header_parser(nc: Any) -> Callable[[bytes | None], Awaitable[dict[str, str] | None]]:
    """nc's parse of a header block, status lines included (nats-py 2.16:
    `Client._process_headers(headers) -> dict | None`, awaited)."""
    return nc._process_headers  # type: ignore[no-any-return]


def tolerate_bad_headers(nc: Any, errors: tuple[type[BaseException], ...]) -> None:
    """nc reads a header block its parser raises one of errors on as no headers (None), instead
    of stopping its read loop: wraps nats-py 2.16's `Client._process_headers` on nc."""
    original = nc._process_headers

    async def process_headers(headers: bytes | None) -> dict[str, str] | None:
        try:
            return await original(headers)  # type: ignore[no-any-return]
        except errors:
            return None

    nc._process_headers = process_headers


def check_server_info(nc: Any, check: Callable[[dict[str, Any]], None]) -> None:
    """check(info) runs on the server's INFO at each (re)connect, before nc sends CONNECT (and any
    credential); an exception from it ends that attempt. nats-py 2.16 calls
    `Client._process_info(info, initial_connection=True)` there; this wraps it on nc."""
    original = nc._process_info

    async def process_info(info: dict[str, Any], initial_connection: bool = False) -> None:
        if initial_connection:
            check(info)
        await original(info, initial_connection)

    nc._process_info = process_info


# -- nats-py 2.16: nats.aio.client.Client, outgoing ----------------------------------------------


def enqueue(nc: Any, command: bytes) -> None:
    """Queue a protocol line for nc's flusher, as nats-py 2.16's `_send_command` and publish do
    (`Client._pending` list and `_pending_data_size`, then a future on `_flush_queue` when it
    is empty to wake `_flusher`). Nothing is awaited: call it from the event loop's thread."""
    nc._pending.append(command)
    nc._pending_data_size += len(command)
    queue = nc._flush_queue
    if queue is not None and queue.empty():
        queue.put_nowait(asyncio.get_running_loop().create_future())


def subscription_id(sub: Any) -> int:
    """The sid of a nats-py 2.16 `Subscription` (`_id`), as MSG lines carry it."""
    return sub._id  # type: ignore[no-any-return]


def abort_socket(nc: Any) -> None:
    """Forget nc's disconnected/closed callbacks and abort its TCP socket at once, so that a
    close cannot wait on a stream nobody will ever end (after a failed TLS upgrade). nats-py 2.16:
    `Client._disconnected_cb`, `_closed_cb`, `_transport`, `TcpTransport._io_writer`."""
    nc._disconnected_cb = nc._closed_cb = None
    transport = nc._transport
    writer = getattr(transport, "_io_writer", None)
    if writer is not None:
        writer.transport.abort()
        transport._io_writer = None


# -- nats-py 2.16: nats.micro ----------------------------------------------------------------------


class MicroEndpoint:
    """One endpoint of a nats.micro `Service`, as the runtime serves it (nats-py 2.16's
    `Endpoint._subscription` and `_num_requests`, which `Service.stats()` reports)."""

    __slots__ = ("endpoint",)

    def __init__(self, endpoint: Any) -> None:
        self.endpoint = endpoint

    @property
    def subscription(self) -> Any:
        """The endpoint's subscription; None before it starts and after the service stops."""
        return self.endpoint._subscription

    def count_request(self) -> None:
        """Count a request served without the endpoint's handler in `$SRV.STATS`."""
        self.endpoint._num_requests += 1


def micro_endpoints(service: Any) -> Iterator[MicroEndpoint]:
    """The endpoints of a nats.micro service (nats-py 2.16: `Service._endpoints`, emptied by
    `stop()`)."""
    for endpoint in list(service._endpoints):
        yield MicroEndpoint(endpoint)
