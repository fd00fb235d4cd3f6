"""Keep the KV snapshots current, off the command path.

A durable pull consumer `AGG_<aggregate>` on the event stream (shared by every
runtime process) hands out events; for each entity in a batch the snapshot is
brought up to the batch's last sequence with a compare-and-set write — from
the warm entity in memory when it is at least that recent, otherwise by
folding the stream from the snapshot on. Writes are coalesced per entity per
batch and safe to repeat, so a crash between append and snapshot is repaired
here (and by the catch-up every load does). Only the events whose snapshot is
written are acknowledged (explicit acks: a batch another process holds is never
acknowledged by this one); the others are redelivered.

Every event costs this process one delivery and one ack, so both take the lean
path (wire.py): a pull request is kept open on an inbox of its own, deliveries
are noted straight from the read loop (subject and ack subject only: the event
itself is not parsed), and a batch's acks leave in one write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import orjson

from esfsm.errors import EsfsmError
from esfsm.runtime.entity import Entity
from esfsm.runtime.jetstream import StoreError
from esfsm.runtime.store import AggregateStore
from esfsm.runtime.wire import wire

log = logging.getLogger("esfsm.projector")
PULL = 1000  # events asked for per pull request
EXPIRES = 2.0  # seconds a pull request stays open
CONCURRENCY = 32  # snapshot writes in flight per batch
MIN_CYCLE = 2.0  # seconds: under load, several events of an entity share one write
BUSY = 50  # a batch at least this large means load: pace the next cycle
RETRY = 0.5  # seconds before pulling again after an error status (JetStream down, consumer missing)
ACK, NAK = b"+ACK", b'-NAK {"delay": 1000000000}'


def stream_sequence(ack_subject: str) -> int | None:
    """The stream sequence in a JetStream ack subject ($JS.ACK.<stream>.<consumer>.<delivered>.
    <sseq>.<dseq>.<ts>.<pending>, or the v2 form with domain and account hash)."""
    tokens = ack_subject.split(".")
    try:
        if len(tokens) == 9:
            return int(tokens[5])
        if len(tokens) >= 11:
            return int(tokens[7])
    except ValueError:
        pass
    return None


class Projector:
    def __init__(self, store: AggregateStore, cached: Callable[[str], Entity | None] = lambda key: None) -> None:
        self.store = store
        self.cached = cached
        self.prefix = store.names.events + "."
        self.written = 0
        self.wire = wire(store.nc)
        self._inbox = store.nc.new_inbox()
        self._next = f"{store.api}.CONSUMER.MSG.NEXT.{store.names.stream}.{store.durable}"
        self._revisions: dict[str, int] = {}  # the KV revision this process wrote last, per key
        self._stopping = asyncio.Event()
        self._arrived = asyncio.Event()
        self._batch: list[tuple[str | None, int | None, str]] = []  # (key, stream seq, ack subject)
        self._asked = 0  # events still to come on the open pull request
        self._pull_deadline = 0.0  # when the open pull request is over for sure
        self._retry: asyncio.TimerHandle | None = None

    def key_of(self, subject: str) -> str | None:
        if not subject.startswith(self.prefix):
            return None
        return subject[len(self.prefix):].split(".", 1)[0] or None

    # -- the pull request, from the read loop ---------------------------------

    def _pull(self) -> None:
        self._retry = None
        if self._stopping.is_set():
            return
        loop = asyncio.get_running_loop()
        try:
            self.wire.publish(self._next, orjson.dumps({"batch": PULL, "expires": int(EXPIRES * 1e9)}), self._inbox)
        except Exception as err:  # disconnected: the watchdog in _loop pulls again
            log.debug("pull from %s not sent: %s", self.store.durable, type(err).__name__)
            self._pull_deadline = loop.time() + RETRY
            return
        self._asked = PULL
        self._pull_deadline = loop.time() + EXPIRES + 1.0

    def _pull_later(self) -> None:
        if self._retry is None:
            self._asked = 0
            self._pull_deadline = asyncio.get_running_loop().time() + RETRY + EXPIRES + 1.0
            self._retry = asyncio.get_running_loop().call_later(RETRY, self._pull)

    def _deliver(self, subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
        if not reply:  # a status: the pull request ended (408 expired), or could not be served
            status = (headers or {}).get("Status")
            if status == "100":  # heartbeat
                return
            if status == "408":  # the request expired: ask again at once
                self._pull()
            else:
                log.debug("pull from %s ended: %s %s", self.store.durable, status,
                          (headers or {}).get("Description", ""))
                self._pull_later()
            return
        self._batch.append((self.key_of(subject), stream_sequence(reply), reply))
        self._arrived.set()
        self._asked -= 1
        if self._asked <= 0:
            self._pull()

    # -- writing snapshots ----------------------------------------------------

    async def run(self) -> None:
        sub = await self.wire.subscribe(self._inbox, self._deliver, parse_headers=False)
        try:
            await self._loop()
        finally:
            if self._retry is not None:
                self._retry.cancel()
            try:
                await self.wire.unsubscribe(sub)
            except Exception:  # already closed with the connection
                log.debug("unsubscribe of %s failed", self.store.durable, exc_info=True)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        self._pull()
        while not self._stopping.is_set():
            if not self._batch:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), EXPIRES)
                except asyncio.TimeoutError:
                    pass
                if loop.time() > self._pull_deadline and self._retry is None:  # its end got lost (reconnect)
                    self._pull()
                continue
            started = loop.time()
            batch, self._batch = self._batch, []
            try:
                await self.project(batch)
            except Exception as err:  # e.g. acks during a disconnect: redelivery after ack_wait repairs it
                log.warning("projecting a batch of %s failed: %s: %s", self.store.durable, type(err).__name__, err)
                await asyncio.sleep(0.5)
            pause = MIN_CYCLE - (loop.time() - started)
            if pause > 0 and len(batch) >= BUSY:  # idle: write at once; busy: coalesce
                await asyncio.sleep(pause)

    async def project(self, batch: list[tuple[str | None, int | None, str]]) -> None:
        newest: dict[str, int] = {}
        for key, seq, _ in batch:
            if key is not None and seq is not None:
                newest[key] = max(newest.get(key, 0), seq)
        # Warm entities over the revision this process wrote last: all at once, no reads.
        # The rest (and any of those that raced) read the snapshot first, CONCURRENCY at a time.
        fast: list[tuple[Entity, int]] = []
        slow: list[str] = []
        for key, seq in newest.items():
            cached, hint = self.cached(key), self._revisions.get(key, 0)
            if cached is not None and self.store.can_write_over(key, seq, cached, hint):
                fast.append((cached, hint))
            else:
                slow.append(key)
        if fast:
            for (entity, _), outcome in zip(fast, await self.store.write_over(fast)):
                if isinstance(outcome, BaseException):
                    slow.append(entity.state.key)
                else:
                    self._written(entity.state.key, outcome)
        limit = asyncio.Semaphore(CONCURRENCY)

        async def write(key: str, seq: int) -> bool:
            async with limit:
                try:
                    revision = await self.store.write_snapshot(key, seq, self.cached(key))
                except (StoreError, EsfsmError) as err:
                    log.error("snapshot of %s %r failed: %s", self.store.compiled.name, key, err)
                    return False
                except Exception as err:  # KV unavailable: redelivery will retry
                    log.warning("snapshot of %s %r failed: %s", self.store.compiled.name, key, err)
                    return False
                if revision:
                    self._written(key, revision)
                return True

        results = await asyncio.gather(*[write(key, newest[key]) for key in slow])
        failed = {key for key, ok in zip(slow, results) if not ok}
        self.wire.publish_many([(reply, NAK if key in failed else ACK) for key, _, reply in batch])

    def _written(self, key: str, revision: int) -> None:
        if len(self._revisions) > 100_000:
            self._revisions.clear()  # only a hint: a miss costs one read
        self._revisions[key] = revision
        self.written += 1

    def stop(self) -> None:
        self._stopping.set()
        self._arrived.set()
