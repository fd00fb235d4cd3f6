"""Keep the KV snapshots current, off the command path.

A durable pull consumer `AGG_<aggregate>` on the event stream (shared by every
runtime process) hands out batches of events; for each entity in a batch the
snapshot is brought up to the batch's last sequence with a compare-and-set
write — from the warm entity in memory when it is at least that recent,
otherwise by folding the stream from the snapshot on. Writes are coalesced
per entity per batch and safe to repeat, so a crash between append and
snapshot is repaired here (and by the catch-up every load does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import nats.errors

from esfsm.errors import EsfsmError
from esfsm.runtime.entity import Entity
from esfsm.runtime.jetstream import StoreError
from esfsm.runtime.store import AggregateStore

log = logging.getLogger("esfsm.projector")
BATCH = 1000
CONCURRENCY = 32  # snapshot writes in flight per batch
MIN_CYCLE = 0.5  # seconds: under load, several events of an entity share one write
BUSY = 50  # a batch at least this large means load: pace the next cycle


class Projector:
    def __init__(self, store: AggregateStore, cached: Callable[[str], Entity | None] = lambda key: None) -> None:
        self.store = store
        self.cached = cached
        self.prefix = store.names.events + "."
        self.written = 0
        self._revisions: dict[str, int] = {}  # the KV revision this process wrote last, per key
        self._stopping = asyncio.Event()

    def key_of(self, subject: str) -> str | None:
        if not subject.startswith(self.prefix):
            return None
        return subject[len(self.prefix):].split(".", 1)[0] or None

    async def run(self) -> None:
        js = self.store.js
        sub = await js.pull_subscribe_bind(self.store.durable, self.store.names.stream)
        try:
            await self._loop(sub)
        finally:
            try:
                await sub.unsubscribe()
            except Exception:  # already closed with the connection
                log.debug("unsubscribe of %s failed", self.store.durable, exc_info=True)

    async def _loop(self, sub) -> None:  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            started = loop.time()
            try:
                msgs = await sub.fetch(BATCH, timeout=0.5)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):  # nothing new (nats-py raises either)
                continue
            except Exception as err:  # disconnected: nats-py reconnects; try again shortly
                if self._stopping.is_set():
                    break
                log.warning("fetch from %s failed: %s: %s", self.store.durable, type(err).__name__, err)
                await asyncio.sleep(0.5)
                continue
            try:
                await self.project(msgs)
            except Exception as err:  # e.g. acks during a disconnect: redelivery after ack_wait repairs it
                log.warning("projecting a batch of %s failed: %s: %s", self.store.durable, type(err).__name__, err)
                await asyncio.sleep(0.5)
            pause = MIN_CYCLE - (loop.time() - started)
            if pause > 0 and BUSY <= len(msgs) < BATCH:  # idle: write at once; busy: coalesce
                await asyncio.sleep(pause)

    async def project(self, msgs: list) -> None:
        newest: dict[str, int] = {}
        for msg in msgs:
            key = self.key_of(msg.subject)
            if key is not None:
                newest[key] = max(newest.get(key, 0), msg.metadata.sequence.stream)
        limit = asyncio.Semaphore(CONCURRENCY)

        async def write(key: str, seq: int) -> bool:
            async with limit:
                try:
                    revision = await self.store.write_snapshot(key, seq, self.cached(key),
                                                               revision_hint=self._revisions.get(key, 0))
                except (StoreError, EsfsmError) as err:
                    log.error("snapshot of %s %r failed: %s", self.store.compiled.name, key, err)
                    return False
                except Exception as err:  # KV unavailable: redelivery will retry
                    log.warning("snapshot of %s %r failed: %s", self.store.compiled.name, key, err)
                    return False
                if revision:
                    if len(self._revisions) > 100_000:
                        self._revisions.clear()  # only a hint: a miss costs one read
                    self._revisions[key] = revision
                    self.written += 1
                return True

        results = await asyncio.gather(*[write(key, seq) for key, seq in newest.items()])
        failed = not all(results)
        for msg in msgs:
            if failed:
                await msg.nak(delay=1)
            else:
                await msg.ack()

    def stop(self) -> None:
        self._stopping.set()
