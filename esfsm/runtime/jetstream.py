"""The JetStream operations nats-py has no helper for, done on the raw protocol.

* an append with per-entity optimistic concurrency (one publish, or an ADR-50
  atomic batch for several events);
* reading one entity's events with batch direct get (ADR-31);
* the last message of an entity (direct get ``last_by_subj``).

Acks are parsed with orjson straight from the reply; no PubAck dataclass and
no timer per request.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import orjson
from nats.aio.client import Client
from nats.errors import (
    ConnectionClosedError,
    ConnectionDrainingError,
    ConnectionReconnectingError,
    NoRespondersError,
    OutboundBufferLimitError,
    StaleConnectionError,
    TimeoutError,
)
from nats.js.errors import KeyWrongLastSequenceError

from esfsm.errors import EsfsmError
from esfsm.runtime.wire import header_block, one_per_client, wire

log = logging.getLogger("esfsm.jetstream")
WRONG_LAST_SEQUENCE = 10071  # Nats-Expected-Last-Subject-Sequence mismatch
WRONG_LAST_SEQUENCE_CONSTANT = 10164  # the same, as newer servers word it for KV
EXPECTED_SEQ = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_SEQ_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
MSG_ID = "Nats-Msg-Id"
BATCH_ID = "Nats-Batch-Id"
BATCH_SEQ = "Nats-Batch-Sequence"
BATCH_COMMIT = "Nats-Batch-Commit"
CONTENT_TYPE = "Content-Type"
EVENT_CONTENT_TYPE = "application/cloudevents+json"
DIRECT_GET_BATCH = 256
SWEEP = 0.1  # seconds between checks for overdue requests


class StoreError(EsfsmError):
    """JetStream did not store (or could not be asked): nothing was written, or it is unknown."""


class ConflictError(StoreError):
    """Something was appended for the entity since the expected sequence (err_code 10071)."""

    def __init__(self, description: str) -> None:
        super().__init__(f"concurrent append: {description}")


class UnavailableError(StoreError):
    """No answer from JetStream. ``maybe_stored`` is False when nothing left this
    process (disconnected, no responders), True when a request went out and no
    acknowledgement came back (a timeout): then the append may have happened."""

    def __init__(self, message: str, maybe_stored: bool = False) -> None:
        super().__init__(message)
        self.maybe_stored = maybe_stored


# Raised by nats-py when a request cannot be sent at all: nothing reached the server.
NOT_SENT = (
    NoRespondersError,
    OutboundBufferLimitError,
    ConnectionClosedError,
    ConnectionReconnectingError,
    ConnectionDrainingError,
    StaleConnectionError,
)


@dataclass(frozen=True)
class Outgoing:
    subject: str
    body: bytes
    msg_id: str


@dataclass(frozen=True)
class Stored:
    seq: int
    subject: str
    headers: dict[str, str]
    body: bytes


# A request's reply: its data, and its headers (None unless it is a status message).
Reply = tuple[bytes, dict[str, str] | None]
# then(answer, error) of Requester.send_then: ((data, headers), None), or (None, the error)
Answer = Callable[[Reply | None, BaseException | None], None]


class Requester:
    """Request/reply on one wildcard inbox subscription, for the hot path.

    nats-py's `request` spends a NUID token, an `asyncio.wait_for`, a `Msg` and a
    task switch per call; here a counter names the reply, a periodic sweep bounds
    the wait (to within SWEEP seconds) and the reply reaches its future straight
    from the read loop (see wire.py). The inbox is under `_INBOX.` so the usual
    client permissions cover it.
    """

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.wire = wire(nc)
        self.prefix = nc.new_inbox() + "."
        self._pending: dict[str, asyncio.Future[Reply] | Answer] = {}
        self._sub: Any = None
        self._subscribing: asyncio.Lock | None = None
        self._count = 0
        # Deadlines in the order the requests went out, one queue per timeout value:
        # a sweep a few times a second expires the overdue ones (no timer per request).
        self._deadlines: dict[float, deque[tuple[float, str]]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def _deliver(self, subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
        waiter = self._pending.pop(subject[len(self.prefix) :], None)
        if waiter is None:
            return
        if isinstance(waiter, asyncio.Future):
            if not waiter.done():
                waiter.set_result((data, headers))
        else:
            waiter((data, headers), None)

    def _sweep(self) -> None:
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        pending = self._pending
        for queue in self._deadlines.values():
            while queue and (queue[0][1] not in pending or queue[0][0] <= now):
                _, token = queue.popleft()
                waiter = pending.pop(token, None)
                if waiter is None:
                    continue
                if isinstance(waiter, asyncio.Future):
                    if not waiter.done():
                        waiter.set_exception(TimeoutError())
                else:
                    try:
                        waiter(None, TimeoutError())
                    except Exception:  # the other waiters must still be told
                        log.exception("a request's timeout callback failed")
        if pending:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP, self._sweep)

    async def ready(self) -> None:
        """Subscribe the inbox (once); send() needs it."""
        if self._sub is not None:
            return
        if self._subscribing is None:
            self._subscribing = asyncio.Lock()
        async with self._subscribing:
            if self._sub is None:
                self._sub = await self.wire.subscribe(self.prefix + "*", self._deliver, parse_headers=False)

    def send(self, subject: str, payload: bytes, timeout: float, headers: bytes = b"") -> asyncio.Future[Reply]:
        """Publish a request now; the future gets the reply's (data, headers), or TimeoutError.
        Several can be in flight without a task each (after `await ready()`)."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._send(subject, payload, timeout, headers, future)
        return future

    def send_then(self, subject: str, payload: bytes, timeout: float, headers: bytes, then: Answer) -> None:
        """Publish a request now; then((data, headers), None) is called from the read loop when
        the reply arrives, or then(None, TimeoutError()) when it does not in time."""
        self._send(subject, payload, timeout, headers, then)

    def _send(
        self, subject: str, payload: bytes, timeout: float, headers: bytes, waiter: asyncio.Future[Reply] | Answer
    ) -> None:
        self._count += 1
        token = str(self._count)
        self.wire.publish(subject, payload, self.prefix + token, headers)  # raises if it cannot go out
        self._pending[token] = waiter
        queue = self._deadlines.get(timeout)
        if queue is None:
            queue = self._deadlines[timeout] = deque()
        loop = asyncio.get_running_loop()
        queue.append((loop.time() + timeout, token))
        if self._sweeper is None:
            self._sweeper = loop.call_later(SWEEP, self._sweep)

    async def request(self, subject: str, payload: bytes, timeout: float, headers: bytes = b"") -> Reply:
        """The reply's (data, headers); headers is None unless it is a status message."""
        if self._sub is None:
            await self.ready()
        data, reply_headers = await self.send(subject, payload, timeout, headers)
        if reply_headers and reply_headers.get("Status") == "503" and not data:
            raise NoRespondersError
        return data, reply_headers


_REQUESTERS: weakref.WeakKeyDictionary[Client, Requester] = weakref.WeakKeyDictionary()


def requester(nc: Client) -> Requester:
    """The request mux of nc (made on first use)."""
    return one_per_client(_REQUESTERS, nc, Requester)


def _publish_ack(data: bytes, what: str, conflict: Callable[[str], Exception]) -> int:
    """The stream sequence from the ack of a publish to a stream (an append, a KV write);
    conflict(description) when its expected last sequence did not match."""
    try:
        ack = orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise StoreError(f"unexpected JetStream reply {data[:200]!r}") from err
    error = ack.get("error")
    if error:
        if error.get("err_code") in (WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_CONSTANT):
            raise conflict(error.get("description", ""))
        raise StoreError(
            f"JetStream refused {what}: {error.get('description')} "
            f"(code {error.get('code')}, err_code {error.get('err_code')})"
        )
    return int(ack["seq"])


def _ack(data: bytes) -> int:
    """The stream sequence from an append's ack; ConflictError or StoreError."""
    return _publish_ack(data, "the append", ConflictError)


async def append(
    nc: Client, entity_subjects: str, expected_seq: int, events: Sequence[Outgoing], timeout: float = 5.0
) -> int:
    """Store events for one entity only if its last sequence is expected_seq; all or none.

    One event is one publish; several are one atomic batch (ADR-50) whose
    first message carries the concurrency check. Returns the last sequence.
    """
    check = {EXPECTED_SEQ: str(expected_seq), EXPECTED_SEQ_SUBJECT: entity_subjects}
    ctype = {CONTENT_TYPE: EVENT_CONTENT_TYPE}
    mux = requester(nc)
    request = mux.request
    try:
        if len(events) == 1:
            await mux.ready()
            data, headers = await append_one(nc, entity_subjects, expected_seq, events[0], timeout)
            return append_result(data, headers)
        batch = uuid.uuid4().hex
        last = len(events)
        for i, event in enumerate(events, start=1):
            headers = {**ctype, BATCH_ID: batch, BATCH_SEQ: str(i), MSG_ID: event.msg_id}
            if i == 1:
                headers.update(check)
                data, _ = await request(event.subject, event.body, timeout, header_block(headers))
                if data:  # an error already (the first message's ack is empty otherwise)
                    _ack(data)
            elif i < last:
                wire(nc).publish(event.subject, event.body, headers=header_block(headers))
            else:
                headers[BATCH_COMMIT] = "1"
                data, _ = await request(event.subject, event.body, timeout, header_block(headers))
                return _ack(data)
    except NOT_SENT as err:
        raise UnavailableError(f"cannot reach JetStream ({type(err).__name__})") from err
    except TimeoutError as err:
        raise UnavailableError("JetStream did not acknowledge the append in time", maybe_stored=True) from err
    raise AssertionError("unreachable")  # pragma: no cover


def kv_update_headers(last: int) -> bytes:
    """The headers of a compare-and-set KV write over revision last (what `KeyValue.update` sends)."""
    return header_block({EXPECTED_SEQ: str(last)})


def kv_update_result(subject: str, data: bytes) -> int:
    """The new revision from a KV write's ack; KeyWrongLastSequenceError when the entry moved on."""
    return _publish_ack(
        data, f"the write to {subject}", lambda description: KeyWrongLastSequenceError(description=description)
    )


async def kv_update(nc: Client, subject: str, value: bytes, last: int, timeout: float = 5.0) -> int:
    """Compare-and-set write of one KV entry on the lean path; the new revision."""
    try:
        data, _ = await requester(nc).request(subject, value, timeout, kv_update_headers(last))
    except NOT_SENT as err:
        raise UnavailableError(f"cannot reach JetStream ({type(err).__name__})") from err
    except TimeoutError as err:
        raise UnavailableError("JetStream did not acknowledge a snapshot write in time", maybe_stored=True) from err
    return kv_update_result(subject, data)


@overload
def append_one(
    nc: Client, entity_subjects: str, expected_seq: int, event: Outgoing, timeout: float = 5.0, then: None = None
) -> asyncio.Future[Reply]: ...
@overload
def append_one(
    nc: Client, entity_subjects: str, expected_seq: int, event: Outgoing, timeout: float, then: Answer
) -> None: ...
def append_one(
    nc: Client,
    entity_subjects: str,
    expected_seq: int,
    event: Outgoing,
    timeout: float = 5.0,
    then: Answer | None = None,
) -> asyncio.Future[Reply] | None:
    """Start the append of a single event (the request mux must be ready). Without then, a
    future gets the ack for append_result, or TimeoutError; with then, it is called with
    them instead (see Requester.send_then). Raises NOT_SENT errors when it cannot go out."""
    headers = (
        f"NATS/1.0\r\n{EXPECTED_SEQ}: {expected_seq}\r\n{EXPECTED_SEQ_SUBJECT}: {entity_subjects}\r\n"
        f"{CONTENT_TYPE}: {EVENT_CONTENT_TYPE}\r\n{MSG_ID}: {event.msg_id}\r\n\r\n"
    ).encode()  # header_block
    if then is None:
        return requester(nc).send(event.subject, event.body, timeout, headers)
    requester(nc).send_then(event.subject, event.body, timeout, headers, then)
    return None


def append_result(data: bytes, headers: dict[str, str] | None) -> int:
    """The stream sequence from an append's reply; NoRespondersError, ConflictError or StoreError."""
    if headers and headers.get("Status") == "503" and not data:
        raise NoRespondersError
    return _ack(data)


def api_prefix(domain: str | None = None) -> str:
    return f"$JS.{domain}.API" if domain else "$JS.API"


async def api_request(nc: Client, subject: str, body: Mapping[str, Any], timeout: float, what: str) -> dict[str, Any]:
    """A JetStream API request nats-py has no helper for: its JSON reply, which may hold an
    `error` (see api_failure). UnavailableError when nothing answered, StoreError when the
    answer is no JSON; what names the request in those messages."""
    try:
        msg = await nc.request(subject, orjson.dumps(body), timeout)
    except (TimeoutError, *NOT_SENT) as err:
        raise UnavailableError(f"JetStream did not answer {what} ({type(err).__name__})") from err
    try:
        reply = orjson.loads(msg.data)
    except orjson.JSONDecodeError as err:
        raise StoreError(f"unexpected JetStream reply {msg.data[:200]!r}") from err
    if not isinstance(reply, dict):
        raise StoreError(f"unexpected JetStream reply {msg.data[:200]!r}")
    return reply


def api_failure(error: Mapping[str, Any], what: str) -> StoreError:
    """The exception for a JetStream API reply's error: unavailable (503), or failed."""
    if error.get("code") == 503:
        return UnavailableError(f"JetStream is unavailable: {error.get('description')}")
    return StoreError(f"{what} failed: {error.get('description')} (code {error.get('code')})")


async def read_subject(
    nc: Client, stream: str, subjects: str, after_seq: int = 0, timeout: float = 5.0, api: str = "$JS.API"
) -> AsyncGenerator[Stored, None]:
    """Every message on subjects with a sequence above after_seq, in order (batch direct get)."""
    api = f"{api}.DIRECT.GET.{stream}"
    seq = after_seq + 1
    while True:
        inbox = nc.new_inbox()
        try:
            sub = await nc.subscribe(inbox)
            await nc.publish(
                api, orjson.dumps({"seq": seq, "next_by_subj": subjects, "batch": DIRECT_GET_BATCH}), reply=inbox
            )
        except NOT_SENT as err:
            raise UnavailableError(f"cannot reach JetStream ({type(err).__name__})") from err
        try:
            pending = 0
            while True:
                try:
                    msg = await sub.next_msg(timeout)
                except TimeoutError as err:
                    raise UnavailableError(f"JetStream did not answer a read of {subjects}") from err
                headers = msg.headers or {}
                status = headers.get("Status")
                if status == "404":
                    return
                if status == "204":
                    pending = int(headers.get("Nats-Num-Pending", "0"))
                    break
                if status:
                    raise _direct_get_failed(subjects, status, headers, api)
                stored = Stored(int(headers["Nats-Sequence"]), headers["Nats-Subject"], headers, msg.data)
                seq = stored.seq + 1
                yield stored
        finally:
            await sub.unsubscribe()
        if pending == 0:
            return


def _direct_get_failed(subjects: str, status: str, headers: Mapping[str, str], api: str) -> StoreError:
    if status == "503":  # no responders: no JetStream behind this API prefix
        return UnavailableError(
            f"JetStream does not answer on {api.split('.DIRECT.', 1)[0]}: is JetStream enabled on "
            "the server, and the JetStream domain (--js-domain) right?"
        )
    description = " ".join(str(headers.get("Description", "")).split())
    return StoreError(f"direct get of {subjects} failed: {status} {description}".rstrip())


async def last_message(
    nc: Client, stream: str, subjects: str, timeout: float = 5.0, api: str = "$JS.API"
) -> Stored | None:
    """The last message on subjects (wildcards allowed), or None if there is none."""
    try:
        data, headers = await requester(nc).request(
            f"{api}.DIRECT.GET.{stream}", orjson.dumps({"last_by_subj": subjects}), timeout
        )
    except (TimeoutError, *NOT_SENT) as err:
        raise UnavailableError(f"JetStream did not answer a read of {subjects} ({type(err).__name__})") from err
    headers = headers or {}
    status = headers.get("Status")
    if status == "404":
        return None
    if status:
        raise _direct_get_failed(subjects, status, headers, api)
    return Stored(int(headers["Nats-Sequence"]), headers["Nats-Subject"], headers, data)
