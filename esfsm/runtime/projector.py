"""Keep the KV snapshots current, off the command path.

A durable pull consumer `AGG_<aggregate>` on the event stream (shared by every
runtime process) hands out events; for each entity in a batch the snapshot is
brought up to the batch's last sequence with a compare-and-set write — from
the warm entity in memory when it is at least that recent, otherwise by
folding the stream from the snapshot on. Writes are coalesced per entity per
batch and safe to repeat, so a crash between append and snapshot is repaired
here (and by the catch-up every load does). A snapshot computed by another
definition is rewritten when an event of its entity comes, or as soon as a load
has met it (`refresh`); one written under a newer definition is left to the
runtimes serving it, and an entity holding events this definition cannot read
is skipped (both logged once; the events are handed back for a newer runtime to
take). Only the events whose snapshot is
written are acknowledged (explicit acks: a batch another process holds is never
acknowledged by this one); the others are redelivered.

Every event costs this process one delivery and one ack, so both take the lean
path (wire.py): pull requests go out on an inbox of its own, deliveries are
noted straight from the read loop (subject and ack subject only: the event
itself is not parsed), and a batch's acks leave in one write. Events are not
taken as they trickle in: a probe (a pull of one, open up to EXPIRES) waits for
the first, then a sweep (`no_wait`) takes everything there is at once. Under
load the next sweep comes MIN_CYCLE later, so the server hands a cycle's events
over in a few large writes instead of one wake-up per event (measured: about
half of what the snapshots cost the server per command, a third of what they
cost this process).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

import orjson
from cachetools import LRUCache

from esfsm.errors import EsfsmError, UnreadableEvent
from esfsm.runtime.entity import Entity, SnapshotTooLarge
from esfsm.runtime.jetstream import StoreError
from esfsm.runtime.partition import Partition
from esfsm.runtime.store import AggregateStore, NewerDefinition
from esfsm.runtime.wire import wire

log = logging.getLogger("esfsm.projector")
SWEEP = 1000  # events asked for per sweep
MOST = 10_000  # events taken at most per cycle (the consumer allows 20,000 unacknowledged)
EXPIRES = 2.0  # seconds the probe stays open
SWEEP_WAIT = 5.0  # seconds before a sweep whose end never came (a reconnect) counts as over
CONCURRENCY = 32  # snapshot writes in flight per batch
MIN_CYCLE = 2.0  # seconds: under load, several events of an entity share one write
BUSY = 50  # a batch at least this large means load: pace the next cycle
RETRY = 0.5  # seconds before pulling again after an error status (JetStream down, consumer missing)
ACK, NAK = b"+ACK", b'-NAK {"delay": 1000000000}'
HAND_OVER = 1000  # events per message handed to the worker that owns their keys
REVISIONS = 100_000  # keys whose last written KV revision is remembered (least recently used forgotten)


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
    def __init__(
        self,
        store: AggregateStore,
        cached: Callable[[str], Entity | None] = lambda key: None,
        partition: Partition | None = None,
    ) -> None:
        self.store = store
        self.cached = cached
        self.partition = partition
        self.handed_over = 0  # events passed to the worker owning their keys
        self.prefix = store.names.events + "."
        self.written = 0
        self.wire = wire(store.nc)
        self._inbox = store.nc.new_inbox()
        self._next = f"{store.api}.CONSUMER.MSG.NEXT.{store.names.stream}.{store.durable}"
        # the KV revision this process wrote last, per key: only a hint (a miss costs one read)
        self._revisions: LRUCache[str, int] = LRUCache(maxsize=REVISIONS)
        self._stopping = asyncio.Event()
        self._batch: list[tuple[str | None, int | None, str]] = []  # (key, stream seq, ack subject)
        self._asked = 0  # events still to come on the open pull request
        self._ended = asyncio.Event()  # the open pull request is over
        self._trouble = False  # ... and it ended with an error status (JetStream down, consumer missing)
        self._stale: set[str] = set()  # keys whose snapshot another definition computed, met by a load
        self._told: set[tuple[str, int]] = set()  # (type or fingerprint, version) already logged as not ours
        store.on_foreign = self.refresh

    def key_of(self, subject: str) -> str | None:
        if not subject.startswith(self.prefix):
            return None
        return subject[len(self.prefix) :].split(".", 1)[0] or None

    # -- pull requests --------------------------------------------------------

    async def _request(self, request: bytes, asked: int, wait: float) -> None:
        """Send one pull request and wait until it is over: all `asked` events came, or a
        status ended it (404 nothing there, 408 expired, anything else is trouble), or `wait`
        seconds passed (its end got lost in a reconnect)."""
        self._ended.clear()
        self._trouble = False
        self._asked = asked
        try:
            self.wire.publish(self._next, request, self._inbox)
        except Exception as err:  # noqa: BLE001 - disconnected: try again a little later
            log.debug("pull from %s not sent: %s", self.store.durable, type(err).__name__)
            self._trouble = True
            return
        try:
            await asyncio.wait_for(self._ended.wait(), wait)
        except TimeoutError:
            pass

    def _deliver(self, subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
        """From the read loop: an event (noted, not parsed) or a status ending the request."""
        if not reply:
            status = (headers or {}).get("Status")
            if status == "100":  # heartbeat
                return
            if status not in ("404", "408"):  # no responders, 409 consumer deleted or push based, ...
                log.debug(
                    "pull from %s ended: %s %s", self.store.durable, status, (headers or {}).get("Description", "")
                )
                self._trouble = True
            self._ended.set()
            return
        self._batch.append((self.key_of(subject), stream_sequence(reply), reply))
        self._asked -= 1
        if self._asked <= 0:
            self._ended.set()

    # -- writing snapshots ----------------------------------------------------

    async def run(self) -> None:
        subs = [await self.wire.subscribe(self._inbox, self._deliver, parse_headers=False)]
        if self.partition is not None:
            subs.append(
                await self.wire.subscribe(
                    self.partition.snapshots(self.partition.index, self.store.compiled.name),
                    self._taken,
                    parse_headers=False,
                )
            )
        try:
            await self._loop()
        finally:
            for sub in subs:
                try:
                    await self.wire.unsubscribe(sub)
                except Exception:  # already closed with the connection
                    log.debug("unsubscribe of %s failed", self.store.durable, exc_info=True)

    def _taken(self, subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
        """From the read loop: events of this worker's keys, handed over by another worker's
        writer; written with the next batch (or acknowledged by nobody: redelivered)."""
        try:
            self._batch.extend((key, seq, ack) for key, seq, ack in orjson.loads(data))
        except (orjson.JSONDecodeError, TypeError, ValueError):
            log.warning("ignored a malformed hand-over on %s", subject)

    def _hand_over(self, batch: list[tuple[str | None, int | None, str]]) -> list[tuple[str | None, int | None, str]]:
        """Pass the events of keys other workers own to them; the rest, to write here."""
        partition = self.partition
        if partition is None:
            return batch
        mine: list[tuple[str | None, int | None, str]] = []
        theirs: dict[int, list[tuple[str | None, int | None, str]]] = {}
        for item in batch:
            key = item[0]
            owner = partition.owner(key) if key is not None and item[1] is not None else partition.index
            if owner == partition.index:
                mine.append(item)
            else:
                theirs.setdefault(owner, []).append(item)
        for owner, items in theirs.items():
            subject = partition.snapshots(owner, self.store.compiled.name)
            for start in range(0, len(items), HAND_OVER):
                try:
                    self.wire.publish(subject, orjson.dumps(items[start : start + HAND_OVER]))
                except Exception as err:  # noqa: BLE001 - disconnected: not acknowledged, so redelivered later
                    log.debug("hand-over to worker %d failed: %s", owner, type(err).__name__)
                    break
                self.handed_over += len(items[start : start + HAND_OVER])
        return mine

    def refresh(self, key: str) -> None:
        """Rewrite key's snapshot under this definition (a load found another's) with the next cycle."""
        self._stale.add(key)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        probe = orjson.dumps({"batch": 1, "expires": int(EXPIRES * 1e9)})
        sweep = orjson.dumps({"batch": SWEEP, "no_wait": True})
        while not self._stopping.is_set():
            if self._stale:
                stale, self._stale = self._stale, set()
                await self.project([], stale)
            if not self._batch:  # idle: wait for the first event
                await self._request(probe, 1, EXPIRES + 1.0)
                if self._trouble:
                    await self._pause(RETRY)  # a missing or misconfigured consumer is not asked in a tight loop
                if not self._batch:
                    continue
            started = loop.time()
            while True:  # sweeps of SWEEP, so that commands are served between them
                await self._request(sweep, SWEEP, SWEEP_WAIT)
                full, trouble = self._asked <= 0, self._trouble
                if not full or trouble or len(self._batch) >= MOST or self._stopping.is_set():
                    break
            batch, self._batch = self._batch, []
            try:
                await self.project(batch)
            except Exception as err:  # noqa: BLE001 - e.g. acks during a disconnect: redelivery after ack_wait repairs it
                log.warning("projecting a batch of %s failed: %s: %s", self.store.durable, type(err).__name__, err)
                trouble = True
            if trouble:
                await self._pause(RETRY)
            elif len(batch) >= BUSY and not full:  # load: let events gather, several per entity share a write
                await self._pause(MIN_CYCLE - (loop.time() - started))

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            try:
                await asyncio.wait_for(self._stopping.wait(), seconds)
            except TimeoutError:
                pass

    async def project(self, batch: list[tuple[str | None, int | None, str]], stale: Iterable[str] = ()) -> None:
        batch = self._hand_over(batch)
        newest: dict[str, int] = dict.fromkeys(stale, 0)
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
            for (entity, _), outcome in zip(fast, await self.store.write_over(fast), strict=True):  # one outcome each
                if isinstance(outcome, BaseException):
                    slow.append(entity.state.key)
                else:
                    self._written(entity.state.key, outcome)
        limit = asyncio.Semaphore(CONCURRENCY)

        async def write(key: str, seq: int) -> bool:
            async with limit:
                try:
                    revision = await self.store.write_snapshot(key, seq, self.cached(key))
                except SnapshotTooLarge as err:  # retrying cannot help; the entity's next event tries again
                    log.error("%s", err)
                    return True
                except (UnreadableEvent, NewerDefinition) as err:  # a newer runtime's: handed back to it
                    self._not_ours(err)
                    return False
                except (StoreError, EsfsmError) as err:
                    log.error("snapshot of %s %r failed: %s", self.store.compiled.name, key, err)
                    return False
                except Exception as err:  # noqa: BLE001 - KV unavailable: redelivery will retry
                    log.warning("snapshot of %s %r failed: %s", self.store.compiled.name, key, err)
                    return False
                if revision:
                    self._written(key, revision)
                return True

        async with asyncio.TaskGroup() as writes:  # cancelled together, never left running
            results = [writes.create_task(write(key, newest[key])) for key in slow]
        failed = {key for key, ok in zip(slow, results, strict=True) if not ok.result()}
        self.wire.publish_many([(reply, NAK if key in failed else ACK) for key, _, reply in batch])

    def _not_ours(self, err: UnreadableEvent | NewerDefinition) -> None:
        """Log once per event type and version (or newer definition) what this writer leaves alone."""
        what = (err.event_type, err.version) if isinstance(err, UnreadableEvent) else (err.fp, 0)
        if what in self._told:
            return
        self._told.add(what)
        log.warning(
            "snapshots of %s: %s; this runtime leaves such entities' snapshots to a runtime with a newer definition",
            self.store.compiled.name,
            err,
        )

    def _written(self, key: str, revision: int) -> None:
        self._revisions[key] = revision
        self.written += 1

    def stop(self) -> None:
        self._stopping.set()
        self._ended.set()
