"""A command's I/O around the one command path (esfsm/command_path.py).

`prepare` and `step` make every decision; this module only reads the entity
and earlier answers, appends events and remembers answers.

* The task path (`process`): the entity's turn, then load it if cold, look up
  an earlier answer to its command id (the entity's recent answers, then the
  durable ones), step; a new answer that stores nothing is only given once the
  entity is known to be at its latest event; events are appended with the
  per-entity concurrency check, and on a conflict the entity is caught up and
  the command stepped again (invariant 3).
* The fast path (`fast`): a warm entity whose turn is free and a command with
  no command id is stepped straight from the read loop, its append started
  there and answered from the ack's callback: no task, lock or future wait.
  Anything else — a cold entity, a queue for the key, a command id to look up,
  an answer to confirm, several events, a failed append — continues on the
  task path with the turn still held, so one entity's commands keep their
  order.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson
from nats.aio.client import Client
from nats.errors import MaxPayloadError
from nats.errors import TimeoutError as NatsTimeoutError

from esfsm.command_path import Outcome, Prepared, prepare, state_too_large, step
from esfsm.compiler import CompiledAggregate
from esfsm.contract import COMMAND_ID_HEADER, EVENT_VERSION_EXTENSION, TEST_NOW_HEADER
from esfsm.errors import EsfsmError, UnreadableEvent
from esfsm.events import event_to_dict
from esfsm.runtime.entity import Entity, accepted_reply
from esfsm.runtime.jetstream import (
    NOT_SENT,
    ConflictError,
    Outgoing,
    StoreError,
    UnavailableError,
    append_result,
)
from esfsm.runtime.store import AggregateStore
from esfsm.runtime.turns import Slot, Slots
from esfsm.values import BAD_REQUEST, CONFLICT, INTERNAL, UNAVAILABLE, Accepted, EntityState, ErrorDetail, Rejected

log = logging.getLogger("esfsm.service")
MAX_ATTEMPTS = 8  # decide + append attempts per command before a 409
HEADROOM = 512  # bytes: more than an append's headers (batch ones included) or an accepted reply's JSON add
SNAPSHOT_FIELDS = 160  # bytes: what a snapshot adds to an entity's state and data (names, version, seq)

Reply = dict[str, Any]
Respond = Callable[[str, Reply, str, "str | None"], None]
Spawn = Callable[[Coroutine[Any, Any, None]], None]


def rejection(code: int, message: str) -> Reply:
    return Rejected(code, message, (ErrorDetail("", message),)).as_dict()


def internal_error(err: BaseException) -> Reply:
    return rejection(INTERNAL, f"internal error: {type(err).__name__}: {err}")


class Pipeline:
    """Decides and stores the commands of one aggregate on one NATS connection."""

    def __init__(
        self,
        nc: Client,
        compiled: CompiledAggregate,
        store: AggregateStore,
        slots: Slots,
        respond: Respond,
        spawn: Spawn,
        test_clock: bool = False,
    ) -> None:
        self.nc = nc
        self.compiled = compiled
        self.store = store
        self.slots = slots
        self.respond = respond
        self.spawn = spawn
        self.test_clock = test_clock  # only `esfsm test --nats`: the clock comes from x-esfsm-test-now
        self.inflight = 0  # commands holding their entity's turn outside a task of their own
        self.fast_served = 0  # commands decided and stored without a task
        self._unreadable: set[tuple[str, int]] = set()  # (event type, version) already logged as unreadable

    # -- the steps, shared by both paths --------------------------------------------

    def prepare(self, command: str, body: bytes, headers: dict[str, str], key: str | None) -> Prepared | Reply:
        prepared = prepare(self.compiled.commands, self.compiled.unknown_command, command, key, headers, body=body)
        return prepared.as_dict() if isinstance(prepared, Rejected) else prepared

    def _step(self, entity: Entity, prepared: Prepared, earlier: Reply | None = None) -> Outcome:
        return step(self.compiled.decide, entity.state, prepared, earlier, self._now(prepared))

    def _oversize(self, key: str, decision: Accepted, outgoing: list[Outgoing]) -> Reply | None:
        """What JetStream could not take: events over max_payload (400), a state over what one
        snapshot holds (413)."""
        too_large = self._too_big(key, decision.state.state, outgoing) or state_too_large(
            decision, self.store.snapshot_limit - SNAPSHOT_FIELDS
        )
        return too_large.as_dict() if isinstance(too_large, Rejected) else too_large

    def _now(self, prepared: Prepared) -> dt.datetime | None:
        headers = prepared.request.headers
        if not self.test_clock or TEST_NOW_HEADER not in headers:
            return None
        return dt.datetime.fromisoformat(headers[TEST_NOW_HEADER])

    # -- the task path ------------------------------------------------------------

    async def process(self, command: str, body: bytes, headers: dict[str, str], key: str | None) -> Reply:
        """Decide and store one command; the reply as a dict."""
        prepared = self.prepare(command, body, headers, key)
        if isinstance(prepared, dict):
            return prepared
        slot = self.slots.get(prepared.key)
        await slot.turn.acquire()
        try:
            return await self.held(slot, prepared)
        finally:
            self.slots.release(slot)

    async def held(self, slot: Slot, prepared: Prepared, stale: bool = False) -> Reply:
        """Decide and store with the entity's turn held; the reply as a dict."""
        try:
            if stale and slot.entity is not None:  # the fast path's append met a newer event
                await self.store.catch_up(slot.entity)
            return await self._decide_and_store(slot, prepared)
        except UnavailableError as err:
            slot.entity = None  # whatever happened, reload next time
            if err.maybe_stored:
                return rejection(
                    UNAVAILABLE,
                    f"{err}; the command may have been stored: retry it with the same "
                    f"{COMMAND_ID_HEADER} to learn its outcome",
                )
            return rejection(UNAVAILABLE, f"JetStream is unavailable, nothing was stored: {err}")
        except StoreError as err:
            slot.entity = None
            return rejection(INTERNAL, f"storage failure, nothing was stored: {err}")
        except UnreadableEvent as err:  # written by a newer definition (a rolling upgrade), or by none
            slot.entity = None
            return self._unreadable_reply(err)
        except EsfsmError as err:  # the stored history cannot be replayed
            slot.entity = None
            return rejection(INTERNAL, str(err))

    def _unreadable_reply(self, err: UnreadableEvent) -> Reply:
        """A 503: another runtime, with a newer definition, may serve this entity; logged once
        per event type and version."""
        if (err.event_type, err.version) not in self._unreadable:
            self._unreadable.add((err.event_type, err.version))
            log.warning(
                "aggregate %s: an entity holds event %r version %d, which this definition cannot read (%s); "
                "its commands are answered 503 here (expected during a rolling upgrade: a runtime with the "
                "newer definition serves them)",
                self.compiled.name,
                err.event_type,
                err.version,
                err.reason,
            )
        return rejection(
            UNAVAILABLE,
            f"this runtime cannot serve entity {err.key!r}: its event {err.event_type!r} version {err.version} "
            f"cannot be read by this definition ({err.reason}); nothing was stored",
        )

    async def _earlier(self, entity: Entity, prepared: Prepared) -> Reply | None:
        command_id = prepared.command_id
        if command_id is None:
            return None
        return entity.commands.get(command_id) or await self.store.answers.lookup(prepared.key, command_id)

    async def _decide_and_store(self, slot: Slot, prepared: Prepared) -> Reply:
        key, command_id = prepared.key, prepared.command_id
        for _ in range(MAX_ATTEMPTS):
            if slot.entity is None:
                slot.entity = await self.store.load(key)
            entity = slot.entity
            outcome = self._step(entity, prepared, await self._earlier(entity, prepared))
            if outcome.decision is None:
                return outcome.earlier  # type: ignore[no-any-return]
            if outcome.needs_confirming:
                if not await self._fresh(entity):
                    continue
                reply = outcome.decision.as_dict()
                if command_id is not None:
                    await self.store.answers.remember(key, command_id, reply)  # unavailable: a 503, not this
                return reply
            decision = outcome.decision
            assert isinstance(decision, Accepted)
            documents = [event_to_dict(event) for event in decision.events]  # once, for stream and reply
            outgoing = [
                Outgoing(self.store.subject(key, doc["type"]), orjson.dumps(doc), doc["id"]) for doc in documents
            ]
            too_big = self._oversize(key, decision, outgoing)
            if too_big:
                return too_big
            await self.store.catalog.note(
                ((doc["type"], doc.get(EVENT_VERSION_EXTENSION, 1)) for doc in documents), decision.state.state
            )  # before the append: the catalog says what may be stored
            try:
                seq = await self.store.append(key, entity.seq, outgoing)
            except ConflictError:
                await self.store.catch_up(entity)
                continue
            except UnavailableError as err:
                if not err.maybe_stored:
                    raise
                found = await self._stored_after_all(key, entity.seq, outgoing)
                if found is None:
                    raise
                seq = found
            return await self._accepted(entity, prepared, decision.state, seq, documents)
        return rejection(
            CONFLICT,
            f"entity {key!r} is being changed concurrently; gave up after {MAX_ATTEMPTS} attempts, nothing was stored",
        )

    async def _accepted(
        self, entity: Entity, prepared: Prepared, state: EntityState, seq: int, documents: list[Reply]
    ) -> Reply:
        """The events are stored: the entity moves on, the answer is remembered."""
        entity.state, entity.seq = state, seq
        reply = accepted_reply(state.version, state.state, documents)
        command_id = prepared.command_id
        if command_id is not None:
            entity.remember(command_id, reply)
            try:
                await self.store.answers.remember(prepared.key, command_id, reply)
            except StoreError as err:  # the events carry the id: a retry soon still finds it
                log.warning("the answer to command id %r of %r is not recorded: %s", command_id, prepared.key, err)
        return reply

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

    def _too_big(self, key: str, state: str, outgoing: list[Outgoing]) -> Reply | None:
        """A 400 when an event with its headers, or the accepted reply that quotes the events,
        would exceed the server's max_payload: the server would refuse the message (and close
        the connection that sent it), so nothing is stored. HEADROOM, the entity's subjects and
        the state's name bound what the headers and the reply's JSON add to the events."""
        size = sum(len(event.body) for event in outgoing)
        limit = self.nc.max_payload
        if size + HEADROOM + len(self.store.entity_subjects(key)) + len(state) <= limit:
            return None
        return rejection(
            BAD_REQUEST,
            f"the events of this command would be {size} bytes; with their headers "
            f"and the reply that quotes them that is over the NATS server's "
            f"max_payload of {limit} bytes; nothing was stored",
        )

    # -- the fast path: a warm entity, no task ----------------------------------------

    def fast(self, command: str, body: bytes, headers: dict[str, str], key: str | None, reply_to: str) -> bool:
        """Serve a command straight from the read loop when its entity is warm, its turn is
        free and it carries no command id (whose earlier answer may need a read). False: not
        taken at all."""
        slot = self.slots.peek(key) if isinstance(key, str) else None
        if slot is None or slot.entity is None or slot.turn.locked():
            return False
        prepared = self.prepare(command, body, headers, key)
        if isinstance(prepared, dict):  # 400 / 404: the entity is not involved
            self.respond(command, prepared, reply_to, key)
            return True
        if prepared.command_id is not None:
            return False
        slot = self.slots.get(prepared.key)  # the same slot, now the most recent
        slot.turn.try_acquire()  # free: checked above, and nothing ran since
        self.inflight += 1
        try:
            started = self._start_append(slot, prepared, reply_to)
        except (*NOT_SENT, MaxPayloadError):  # disconnected, say: the task path reports it
            started = False
        except Exception:  # a bug: the task path still answers, the log says where
            log.warning("the fast path of %s failed; serving it the ordinary way", command, exc_info=True)
            started = False
        if not started:
            self.finish(slot, prepared, reply_to, self.held(slot, prepared))
        return True

    def _start_append(self, slot: Slot, prepared: Prepared, reply_to: str) -> bool:
        entity = slot.entity
        assert entity is not None
        outcome = self._step(entity, prepared)
        decision = outcome.decision
        if not outcome.stores or not isinstance(decision, Accepted) or len(decision.events) != 1:
            return False  # an answer to confirm first, or a batch: the task path takes steps
        document = event_to_dict(decision.events[0])
        if not self.store.catalog.knows(
            document["type"], document.get(EVENT_VERSION_EXTENSION, 1), decision.state.state
        ):
            return False  # its first append here: the task path notes it in the catalog first
        outgoing = Outgoing(self.store.subject(prepared.key, document["type"]), orjson.dumps(document), document["id"])
        if self._oversize(prepared.key, decision, [outgoing]):
            return False  # the task path rejects it
        expected_seq = entity.seq
        self.store.append_one(
            prepared.key,
            expected_seq,
            outgoing,
            functools.partial(self._acked, slot, prepared, decision.state, document, outgoing, expected_seq, reply_to),
        )
        return True

    def _acked(
        self,
        slot: Slot,
        prepared: Prepared,
        state: EntityState,
        document: Reply,
        outgoing: Outgoing,
        expected_seq: int,
        reply_to: str,
        answer: tuple[bytes, dict[str, str] | None] | None,
        error: BaseException | None,
    ) -> None:
        """The append's ack arrived (or its wait ran out): finish the command."""
        try:
            if error is not None:
                raise error
            assert answer is not None
            seq = append_result(*answer)
        except ConflictError:  # another process appended first: catch up and decide again
            self.finish(slot, prepared, reply_to, self.held(slot, prepared, stale=True))
            return
        except NatsTimeoutError:  # no ack: it may be stored; find out as the task path does
            self.finish(slot, prepared, reply_to, self._resume(slot, outgoing, expected_seq, state, document, prepared))
            return
        except NOT_SENT as err:
            slot.entity = None
            reply = rejection(
                UNAVAILABLE,
                f"JetStream is unavailable, nothing was stored: cannot reach JetStream ({type(err).__name__})",
            )
        except StoreError as err:
            slot.entity = None
            reply = rejection(INTERNAL, f"storage failure, nothing was stored: {err}")
        except Exception as err:  # the reply must still go out; the log keeps the cause
            log.exception("command %s failed unexpectedly", prepared.request.name)
            slot.entity = None
            reply = internal_error(err)
        else:
            assert slot.entity is not None
            slot.entity.state, slot.entity.seq = state, seq
            reply = accepted_reply(state.version, state.state, [document])
            self.fast_served += 1
        self._done(slot)
        self.respond(prepared.request.name, reply, reply_to, prepared.key)

    async def _resume(
        self, slot: Slot, outgoing: Outgoing, expected_seq: int, state: EntityState, document: Reply, prepared: Prepared
    ) -> Reply:
        """After a fast append got no ack: stored or not, as the task path finds out."""
        seq = await self._stored_after_all(prepared.key, expected_seq, [outgoing])
        if seq is None:
            slot.entity = None
            return rejection(
                UNAVAILABLE,
                "JetStream did not acknowledge the append in time; the command may have "
                f"been stored: retry it with the same {COMMAND_ID_HEADER} to learn its "
                "outcome",
            )
        assert slot.entity is not None
        return await self._accepted(slot.entity, prepared, state, seq, [document])

    def finish(self, slot: Slot, prepared: Prepared, reply_to: str, step: Awaitable[Reply]) -> None:
        """Finish a command on the task path, in a task, its entity's turn still held."""

        async def finish() -> None:
            try:
                reply = await step
            except Exception as err:  # the reply must still go out; the log keeps the cause
                log.exception("command %s failed unexpectedly", prepared.request.name)
                reply = internal_error(err)
            finally:
                self._done(slot)
            self.respond(prepared.request.name, reply, reply_to, prepared.key)

        self.spawn(finish())

    def _done(self, slot: Slot) -> None:
        self.slots.release(slot)
        self.inflight -= 1
