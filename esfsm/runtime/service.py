"""Serve one compiled aggregate as a NATS micro service.

The hot path of a command is: parse → decide on the entity's state kept in
memory → one JetStream append with the per-entity concurrency check → reply.
The KV snapshot is written off this path (see projector.py).

* Requests arrive straight from the connection's read loop (wire.py). When
  the entity is warm and nothing is queued for it, the command is decided and
  its append sent right there, and the reply goes out from the ack's
  callback: no task, lock or future wait per command (`_fast`). Every other
  case, and every failure of the fast path, runs in a task of its own.
* Commands for different entities run concurrently; nats.micro would hand
  over one request at a time per endpoint, which is why neither path waits
  for the one before.
* Commands for one entity are applied in arrival order: a FIFO turn per key
  (`_Turn`), which a fast command keeps while it falls back to a task.
* The concurrency check is the safety net across processes: on a conflict
  the entity is caught up from the stream and the command decided again.
* A rejection (or an accepted command that emits nothing) is only answered
  after checking the entity's last stream sequence, so it is never decided
  on a stale state.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import re
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.errors import MaxPayloadError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service, ServiceConfig

from esfsm import __version__
from esfsm.compiler import CompiledAggregate
from esfsm.engine import check_payload, check_request, clip, expected_version, version_conflict
from esfsm.errors import EsfsmError
from esfsm.events import event_to_dict
from esfsm.model import fingerprint
from esfsm.runtime.entity import Entity, accepted_reply
from esfsm.runtime.jetstream import (
    NOT_SENT,
    ConflictError,
    Outgoing,
    StoreError,
    UnavailableError,
    append_result,
    requester,
)
from esfsm.runtime.partition import Partition
from esfsm.runtime.store import AggregateStore
from esfsm.runtime.wire import header_block, wire
from esfsm.values import (
    BAD_REQUEST,
    COMMAND_ID_HEADER,
    CONFLICT,
    INTERNAL,
    KEY_HEADER,
    UNAVAILABLE,
    CommandRequest,
    EntityState,
    ErrorDetail,
    Rejected,
)

log = logging.getLogger("esfsm.service")
MAX_ATTEMPTS = 8  # decide + append attempts per command before a 409
MAX_ENTITIES = 100_000  # entities kept warm in memory per aggregate
HEADROOM = 512  # bytes: more than an append's headers (batch ones included) or an accepted reply's JSON add
MAX_REJECTIONS = 10_000  # rejected command ids remembered per process
TEST_NOW_HEADER = "x-esfsm-test-now"
STOP_WAIT = 30.0  # seconds stop() waits for the commands in flight (each is bounded by its own timeouts)
PASSED_GRACE = 1.0  # seconds a draining worker still takes commands passed on by the others
_VALID_SUBJECT = re.compile(r"[!-~]+")  # printable ASCII, no spaces or control characters


class _Turn:
    """First come, first served per entity key; try_acquire lets the fast path take a free
    turn without awaiting (asyncio.Lock has no such call)."""

    __slots__ = ("held", "waiters")

    def __init__(self) -> None:
        self.held = False
        self.waiters: deque[asyncio.Future[None]] = deque()

    def locked(self) -> bool:
        return self.held or bool(self.waiters)

    def try_acquire(self) -> bool:
        if self.held or self.waiters:
            return False
        self.held = True
        return True

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # handed to us just as we were cancelled: pass it on
            elif turn in self.waiters:
                self.waiters.remove(turn)
            raise

    def release(self) -> None:
        while self.waiters:
            turn = self.waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # handed over: still held
                return
        self.held = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


@dataclass
class _Slot:
    lock: _Turn = field(default_factory=_Turn)
    entity: Entity | None = None


def _error_headers(reply: dict[str, Any]) -> dict[str, str] | None:
    """The micro error headers (ADR-32) of a rejection; None for an accepted reply."""
    if reply["accepted"]:
        return None
    return {"Nats-Service-Error": reply["message"], "Nats-Service-Error-Code": str(reply["code"])}


def _printable(text: str) -> str:
    """A header line cannot carry control characters (the server would drop the connection)."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def rejection(code: int, message: str) -> dict[str, Any]:
    return Rejected(code, message, (ErrorDetail("", message),)).as_dict()


class AggregateService:
    """The micro service `aggregate-<name>`: an endpoint per command, queue group `<name>`."""

    def __init__(self, nc: Client, compiled: CompiledAggregate, store: AggregateStore,
                 test_clock: bool = False, partition: Partition | None = None) -> None:
        self.nc = nc
        self.partition = partition
        self._passed: Subscription | None = None  # commands other workers pass to this one (partition.py)
        self.passed_on = 0  # commands this process passed to the worker owning their key
        self.compiled = compiled
        self.store = store
        self.wire = wire(nc)
        self.service: Service | None = None
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._rejections: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._unknown: Subscription | None = None
        self._inflight = 0  # commands holding their entity's turn outside a task of their own
        self.handled = 0
        self.fast_served = 0  # commands decided and stored without a task (see _fast)
        # Only `esfsm test --nats` sets this: the clock then comes from the header
        # x-esfsm-test-now, so scenarios with a fixed `now` run on NATS too.
        self.test_clock = test_clock

    # -- life cycle ----------------------------------------------------------

    async def listen_passed(self) -> None:
        """With a partition: take the commands the other workers pass on (before any of them
        can pass one, see partition.py)."""
        if self.partition is not None and self._passed is None:
            prefix = self.partition.subject(self.partition.index, f"{self.compiled.model.nats.commands}.")
            self._passed = await self.wire.subscribe(f"{prefix}>", self._receiver(prefix, None, passed=True))

    async def start(self) -> None:
        await self.listen_passed()
        model = self.compiled.model
        self.service = await add_service(self.nc, ServiceConfig(
            name=model.service_name,
            version=__version__,
            description=model.description or f"esfsm aggregate {model.name}",
            queue_group=model.name,
            metadata={
                "aggregate": model.name,
                "commands": model.nats.commands,
                "events": model.nats.events,
                "stream": model.nats.stream,
                "bucket": model.nats.bucket,
                "definition": fingerprint(model),
            },
        ))
        await requester(self.nc).ready()  # the fast path sends appends without awaiting
        for name, command in self.compiled.commands.items():
            await self.service.add_endpoint(EndpointConfig(
                name=name,
                subject=f"{model.nats.commands}.{name}",
                queue_group=model.name,
                handler=self._unrouted,
                metadata={
                    "schema": orjson.dumps(command.model.schema).decode(),
                    "description": command.model.description,
                    "accepted_in": ",".join(sorted(command.accepted_states)),
                },
            ))

        # Unknown commands get a 404 reply rather than "no responders". This
        # subscription covers every command subject in the SAME queue group as
        # the endpoints: NATS hands each request to exactly one member of the
        # group, so it may get known commands too, and serves them like the
        # endpoints do. (A group of its own would see every command twice.)
        # Every request comes straight from the read loop (wire.py); the
        # endpoints' statistics are kept here.
        prefix = f"{model.nats.commands}."
        for endpoint in self.service._endpoints:
            self.wire.route(endpoint._subscription, self._receiver(prefix, endpoint))
        self._unknown = await self.wire.subscribe(f"{prefix}>", self._receiver(prefix, None), queue=model.name)

    def _receiver(self, prefix: str, endpoint: Any, passed: bool = False) -> Any:
        partition = None if passed else self.partition

        def receive(subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
            if not reply:
                return
            if endpoint is not None:
                endpoint._num_requests += 1
            if not _VALID_SUBJECT.fullmatch(reply):  # the server would drop our connection
                log.warning("dropped a request whose reply subject is not a valid subject")
                return
            command, headers = subject[len(prefix):], headers or {}
            if partition is not None and self._pass_on(partition, subject, reply, data, headers):
                return
            if not self._fast(command, data, headers, reply):
                self._spawn(self._serve(command, data, headers, reply))

        return receive

    def _pass_on(self, partition: Partition, subject: str, reply: str, data: bytes,
                 headers: dict[str, str]) -> bool:
        """Send a command for a key another worker owns to that worker (it answers the client)."""
        key = headers.get(KEY_HEADER)
        if key is None:
            return False  # a 400 whatever worker answers it
        owner = partition.owner(key)
        if owner == partition.index:
            return False
        try:
            self.wire.publish(partition.subject(owner, subject), data, reply, header_block(headers))
        except Exception:  # disconnected, say: served here, the concurrency check keeps it right
            log.debug("could not pass a command on to worker %d", owner, exc_info=True)
            return False
        self.passed_on += 1
        return True

    async def stop(self) -> None:
        """Stop taking requests, then let the ones in flight finish. Commands other workers
        pass on are taken until the end, and PASSED_GRACE longer: the other workers get the
        same signal, but may leave the queue group a moment later."""
        if self._unknown is not None:
            await self.wire.unsubscribe(self._unknown)
            self._unknown = None
        if self.service is not None:
            routed = [e._subscription for e in self.service._endpoints if e._subscription is not None]
            await self.service.stop()
            for sub in routed:
                self.wire.unroute(sub)
            self.service = None
        await self._finish_in_flight()
        if self._passed is not None:
            await asyncio.sleep(PASSED_GRACE)
            await self.wire.unsubscribe(self._passed)
            self._passed = None
            await self._finish_in_flight()

    async def _finish_in_flight(self) -> None:
        deadline = asyncio.get_running_loop().time() + STOP_WAIT
        while self._tasks or self._inflight:  # each one ends: an ack, or the request's timeout
            if asyncio.get_running_loop().time() > deadline:
                log.warning("stopped with %d commands still in flight", len(self._tasks) + self._inflight)
                break
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=1)
            else:
                await asyncio.sleep(0.01)

    async def _unrouted(self, request: Request) -> None:  # pragma: no cover - requests arrive through wire.py
        log.warning("request on %s took the slow path", request.subject)

    def _spawn(self, coroutine: Any) -> None:
        """Each request in a task of its own: nats-py awaits a callback before the next."""
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forget(self, key: str) -> None:
        """Drop what this process remembers of key (tests that purge an entity)."""
        self._slots.pop(key, None)
        for remembered in [k for k in self._rejections if k[0] == key]:
            del self._rejections[remembered]

    def cached(self, key: str) -> Entity | None:
        slot = self._slots.get(key)
        return slot.entity if slot else None

    # -- one request ---------------------------------------------------------

    async def _serve(self, command: str, body: bytes, headers: dict[str, str], reply_to: str) -> None:
        try:
            reply = await self.process(command, body, headers)
        except Exception as err:  # the reply must still go out; the log keeps the cause
            log.exception("command %s failed unexpectedly", command)
            reply = rejection(INTERNAL, f"internal error: {type(err).__name__}: {err}")
        self._respond(command, reply, reply_to, headers.get(KEY_HEADER))

    def _respond(self, command: str, reply: dict[str, Any], reply_to: str, key: str | None) -> None:
        self.handled += 1
        if log.isEnabledFor(logging.DEBUG):  # `esfsm run --log-level debug`: one line per command
            self._log_outcome(command, reply, key)
        if not reply["accepted"]:  # rejections quote input, which can be huge; the header repeats it
            reply["message"] = _printable(clip(reply["message"], 500))
            reply["errors"] = [{"path": clip(e["path"]), "message": clip(e["message"], 500)}
                               for e in reply.get("errors", [])[:50]]
        try:
            error_headers = _error_headers(reply)
            self.wire.publish(reply_to, orjson.dumps(reply), headers=header_block(error_headers) if error_headers else b"")
        except Exception:  # connection lost: the client sees a timeout, nothing else to do
            log.warning("could not send the reply to %s", command, exc_info=True)

    def _log_outcome(self, command: str, reply: dict[str, Any], key: str | None) -> None:
        fields: dict[str, Any] = {"aggregate": self.compiled.name, "command": command,
                                  "key": _printable(clip(key or "-", 130)), "accepted": reply["accepted"]}
        if reply["accepted"]:
            fields["version"] = reply["version"]
            fields["state"] = reply["state"]
            fields["events"] = ",".join(event["type"] for event in reply["events"]) or "-"
        else:
            fields["code"] = reply.get("code")
            fields["reason"] = _printable(clip(str(reply["message"]), 200))
        log.debug("command", extra={"fields": fields})

    async def process(self, command: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        """Decide and store one command; the reply as a dict."""
        prepared = self._prepare(command, body, headers)
        if isinstance(prepared, dict):
            return prepared
        request, expected = prepared
        slot = self._slot(request.key)
        async with slot.lock:
            return await self._held(slot, request, expected)

    def _prepare(self, command: str, body: bytes,
                 headers: dict[str, str]) -> dict[str, Any] | tuple[CommandRequest, int | None]:
        """The checks that need no entity: the request and its expected version, or the rejection."""
        key = headers.get(KEY_HEADER)
        problem = check_request(self.compiled, command, key, headers)
        if problem:
            return problem.as_dict()
        assert key is not None
        expected = expected_version(headers)
        assert not isinstance(expected, Rejected)  # check_request looked at it
        try:
            payload = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError as err:
            return rejection(BAD_REQUEST, f"the payload is not valid JSON: {clip(str(err))}")
        bad_payload = check_payload(payload)
        if bad_payload:
            return bad_payload.as_dict()
        return CommandRequest(command, key, payload, headers), expected

    async def _held(self, slot: _Slot, request: CommandRequest, expected: int | None,
                    stale: bool = False) -> dict[str, Any]:
        """Decide and store with the entity's turn held; the reply as a dict."""
        try:
            if stale and slot.entity is not None:  # the fast path's append met a newer event
                await self.store.catch_up(slot.entity)
            return await self._decide_and_store(slot, request, expected)
        except UnavailableError as err:
            slot.entity = None  # whatever happened, reload next time
            if err.maybe_stored:
                return rejection(UNAVAILABLE, f"{err}; the command may have been stored: retry it with the same "
                                              f"{COMMAND_ID_HEADER} to learn its outcome")
            return rejection(UNAVAILABLE, f"JetStream is unavailable, nothing was stored: {err}")
        except StoreError as err:
            slot.entity = None
            return rejection(INTERNAL, f"storage failure, nothing was stored: {err}")
        except EsfsmError as err:  # the stored history cannot be replayed
            slot.entity = None
            return rejection(INTERNAL, str(err))

    def _slot(self, key: str) -> _Slot:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
            if len(self._slots) > MAX_ENTITIES:
                for old_key, old in list(self._slots.items())[: len(self._slots) - MAX_ENTITIES]:
                    if not old.lock.locked():
                        del self._slots[old_key]
        else:
            self._slots.move_to_end(key)
        return slot

    async def _decide_and_store(self, slot: _Slot, request: CommandRequest, expected: int | None) -> dict[str, Any]:
        key = request.key
        command_id = request.headers.get(COMMAND_ID_HEADER)
        for _ in range(MAX_ATTEMPTS):
            if slot.entity is None:
                slot.entity = await self.store.load(key)
            entity = slot.entity
            if command_id is not None:
                earlier = entity.commands.get(command_id) or self._rejections.get((key, command_id))
                if earlier is not None:
                    return earlier
            if expected is not None and expected != entity.state.version:
                if not await self._fresh(entity):
                    continue
                return version_conflict(expected, entity.state.version).as_dict()
            decision = self.compiled.decide(entity.state, request, self._now(request.headers))
            if not decision.accepted or not decision.events:
                if not await self._fresh(entity):
                    continue
                reply = decision.as_dict()
                if command_id is not None:
                    self._remember_rejection(key, command_id, reply)
                return reply
            documents = [event_to_dict(event) for event in decision.events]  # once, for stream and reply
            outgoing = [
                Outgoing(self.store.subject(key, doc["type"]), orjson.dumps(doc), doc["id"]) for doc in documents
            ]
            too_big = self._too_big(key, decision.state.state, outgoing)
            if too_big:
                return too_big
            try:
                seq = await self.store.append(key, entity.seq, outgoing)
            except ConflictError:
                await self.store.catch_up(entity)
                continue
            except UnavailableError as err:
                if not err.maybe_stored:
                    raise
                seq = await self._stored_after_all(key, entity.seq, outgoing)
                if seq is None:
                    raise
            entity.state = decision.state
            entity.seq = seq
            reply = accepted_reply(decision.state.version, decision.state.state, documents)
            if command_id is not None:
                entity.remember(command_id, reply)
            return reply
        return rejection(CONFLICT, f"entity {key!r} is being changed concurrently; "
                                   f"gave up after {MAX_ATTEMPTS} attempts, nothing was stored")

    # -- the fast path: a warm entity, no task ----------------------------------

    def _fast(self, command: str, body: bytes, headers: dict[str, str], reply_to: str) -> bool:
        """Serve a command straight from the read loop when its entity is warm and its turn
        is free: decide now, start the append, answer from the ack's callback. Anything
        else (a cold entity, a queue for the key, a rejection to double-check, several
        events, a failed append) continues on the ordinary path, the turn still held, so
        commands of one entity keep their order. False: not taken at all."""
        key = headers.get(KEY_HEADER)
        slot = self._slots.get(key) if isinstance(key, str) else None
        if slot is None or slot.entity is None or slot.lock.locked():
            return False
        prepared = self._prepare(command, body, headers)
        if isinstance(prepared, dict):  # 400 / 404: the entity is not involved
            self._respond(command, prepared, reply_to, key)
            return True
        request, expected = prepared
        slot.lock.try_acquire()  # free: checked above, and nothing ran since
        self._slots.move_to_end(request.key)
        self._inflight += 1
        try:
            started = self._start_append(slot, request, expected, reply_to)
        except (*NOT_SENT, MaxPayloadError):  # disconnected, say: the ordinary path reports it
            started = False
        except Exception:  # a bug: the ordinary path still answers, the log says where
            log.warning("the fast path of %s failed; serving it the ordinary way", command, exc_info=True)
            started = False
        if not started:
            self._continue(slot, request, reply_to, self._held(slot, request, expected))
        return True

    def _start_append(self, slot: _Slot, request: CommandRequest, expected: int | None, reply_to: str) -> bool:
        entity = slot.entity
        assert entity is not None
        command_id = request.headers.get(COMMAND_ID_HEADER)
        if command_id is not None and (command_id in entity.commands or (request.key, command_id) in self._rejections):
            return False  # answered before: the ordinary path repeats that answer
        if expected is not None and expected != entity.state.version:
            return False
        decision = self.compiled.decide(entity.state, request, self._now(request.headers))
        if not decision.accepted or len(decision.events) != 1:
            return False  # a rejection is only answered after a freshness check; a batch takes steps
        document = event_to_dict(decision.events[0])
        outgoing = Outgoing(self.store.subject(request.key, document["type"]), orjson.dumps(document),
                            document["id"])
        if self._too_big(request.key, decision.state.state, [outgoing]):
            return False  # the ordinary path rejects it
        expected_seq = entity.seq
        self.store.append_one(request.key, expected_seq, outgoing, functools.partial(
            self._acked, slot, request, expected, decision.state, document, outgoing, expected_seq, reply_to))
        return True

    def _acked(self, slot: _Slot, request: CommandRequest, expected: int | None, state: EntityState,
               document: dict[str, Any], outgoing: Outgoing, expected_seq: int, reply_to: str,
               answer: tuple[bytes, dict[str, str] | None] | None, error: BaseException | None) -> None:
        """The append's ack arrived (or its wait ran out): finish the command."""
        try:
            if error is not None:
                raise error
            assert answer is not None
            seq = append_result(*answer)
        except ConflictError:  # another process appended first: catch up and decide again
            self._continue(slot, request, reply_to, self._held(slot, request, expected, stale=True))
            return
        except NatsTimeoutError:  # no ack: it may be stored; find out as the ordinary path does
            self._continue(slot, request, reply_to, self._resume(slot, outgoing, expected_seq, state, document,
                                                                 request))
            return
        except NOT_SENT as err:
            slot.entity = None
            reply = rejection(UNAVAILABLE, f"JetStream is unavailable, nothing was stored: "
                                           f"cannot reach JetStream ({type(err).__name__})")
        except StoreError as err:
            slot.entity = None
            reply = rejection(INTERNAL, f"storage failure, nothing was stored: {err}")
        except Exception as err:  # the reply must still go out; the log keeps the cause
            log.exception("command %s failed unexpectedly", request.name)
            slot.entity = None
            reply = rejection(INTERNAL, f"internal error: {type(err).__name__}: {err}")
        else:
            reply = self._applied(slot, request, state, seq, document)
            self.fast_served += 1
        self._done(slot)
        self._respond(request.name, reply, reply_to, request.key)

    def _applied(self, slot: _Slot, request: CommandRequest, state: EntityState, seq: int,
                 document: dict[str, Any]) -> dict[str, Any]:
        entity = slot.entity
        assert entity is not None
        entity.state = state
        entity.seq = seq
        reply = accepted_reply(state.version, state.state, [document])
        command_id = request.headers.get(COMMAND_ID_HEADER)
        if command_id is not None:
            entity.remember(command_id, reply)
        return reply

    async def _resume(self, slot: _Slot, outgoing: Outgoing, expected_seq: int, state: EntityState,
                      document: dict[str, Any], request: CommandRequest) -> dict[str, Any]:
        """After a fast append got no ack: stored or not, as _decide_and_store finds out."""
        seq = await self._stored_after_all(request.key, expected_seq, [outgoing])
        if seq is None:
            slot.entity = None
            return rejection(UNAVAILABLE, "JetStream did not acknowledge the append in time; the command may have "
                                          f"been stored: retry it with the same {COMMAND_ID_HEADER} to learn its "
                                          "outcome")
        return self._applied(slot, request, state, seq, document)

    def _continue(self, slot: _Slot, request: CommandRequest, reply_to: str, step: Any) -> None:
        """Finish a command on the ordinary path, in a task, its entity's turn still held."""
        async def finish() -> None:
            try:
                reply = await step
            except Exception as err:  # the reply must still go out; the log keeps the cause
                log.exception("command %s failed unexpectedly", request.name)
                reply = rejection(INTERNAL, f"internal error: {type(err).__name__}: {err}")
            finally:
                self._done(slot)
            self._respond(request.name, reply, reply_to, request.key)

        self._spawn(finish())

    def _done(self, slot: _Slot) -> None:
        slot.lock.release()
        self._inflight -= 1

    def _too_big(self, key: str, state: str, outgoing: list[Outgoing]) -> dict[str, Any] | None:
        """A 400 when an event with its headers, or the accepted reply that quotes the events,
        would exceed the server's max_payload: the server would refuse the message (and close
        the connection that sent it), so nothing is stored. HEADROOM, the entity's subjects and
        the state's name bound what the headers and the reply's JSON add to the events."""
        size = sum(len(event.body) for event in outgoing)
        limit = self.nc.max_payload
        if size + HEADROOM + len(self.store.entity_subjects(key)) + len(state) <= limit:
            return None
        return rejection(BAD_REQUEST, f"the events of this command would be {size} bytes; with their headers "
                                      f"and the reply that quotes them that is over the NATS server's "
                                      f"max_payload of {limit} bytes; nothing was stored")

    def _now(self, headers: dict[str, str] | Any) -> dt.datetime | None:
        if not self.test_clock or TEST_NOW_HEADER not in headers:
            return None
        return dt.datetime.fromisoformat(headers[TEST_NOW_HEADER])

    async def _fresh(self, entity: Entity) -> bool:
        """Whether entity reflects the last event stored for it; catches it up if not."""
        last = await self.store.last_seq(entity.state.key)
        if last == entity.seq:
            return True
        await self.store.catch_up(entity)
        return False

    async def _stored_after_all(self, key: str, expected_seq: int, outgoing: list[Outgoing]) -> int | None:
        """After an append timed out: retry it once with the same message ids and the same
        check; a duplicate or our own last message on the entity means it was stored."""
        try:
            try:
                return await self.store.append(key, expected_seq, outgoing)
            except ConflictError:
                return await self.store.find_msg_id(key, expected_seq, outgoing[-1].msg_id)
        except UnavailableError:
            return None

    def _remember_rejection(self, key: str, command_id: str, reply: dict[str, Any]) -> None:
        self._rejections[(key, command_id)] = reply
        while len(self._rejections) > MAX_REJECTIONS:
            self._rejections.popitem(last=False)
