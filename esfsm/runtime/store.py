"""One aggregate's storage on JetStream: its event stream and its KV state bucket."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing

import nats.errors
from cachetools import LRUCache
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import (
    BadRequestError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue

from esfsm import contract
from esfsm.compiler import CompiledAggregate
from esfsm.errors import EsfsmError
from esfsm.runtime.answers import DEFAULT_WINDOW, Answers
from esfsm.runtime.catalog import Catalog
from esfsm.runtime.entity import Entity, fold
from esfsm.runtime.jetstream import (
    MSG_ID,
    Answer,
    Outgoing,
    Stored,
    StoreError,
    api_failure,
    api_prefix,
    api_request,
    append,
    append_one,
    kv_update,
    kv_update_headers,
    kv_update_result,
    last_message,
    read_subject,
    requester,
)

log = logging.getLogger("esfsm.store")
DUPLICATE_WINDOW = 120.0  # seconds: Nats-Msg-Id deduplication of retried appends
KV_HEADROOM = 256  # bytes: more than a KV write's headers take of max_payload
WRITTEN = 100_000  # keys whose last snapshot write this process remembers
WRITE_WINDOW = 128  # snapshot writes in flight at once (write_over)


NO_JETSTREAM = (ServiceUnavailableError, nats.errors.NoRespondersError, nats.errors.TimeoutError)


def no_jetstream(api: str, err: BaseException) -> StoreError:
    """What to tell the operator when JetStream does not answer (one of NO_JETSTREAM)."""
    domain = f" in domain {api.split('.')[1]!r}" if api != "$JS.API" else ""
    return StoreError(
        f"JetStream{domain} does not answer on this NATS server ({type(err).__name__}): "
        "start nats-server with -js (or a `jetstream {}` block in its configuration), or check --js-domain"
    )


class NewerDefinition(EsfsmError):
    """The snapshot was written under a definition registered after this one's (a rolling
    upgrade): this process never overwrites it, and leaves its refresh to a newer runtime."""

    def __init__(self, key: str, fp: str) -> None:
        self.fp = fp
        super().__init__(
            f"the snapshot of {key!r} was written under a newer definition (state fingerprint {fp}); "
            "left to the runtimes serving it"
        )


class AggregateStore:
    """Events in stream `<stream>` on `<events>.<key>.<type>`; snapshots in bucket `<bucket>`."""

    def __init__(
        self,
        nc: Client,
        compiled: CompiledAggregate,
        timeout: float = 5.0,
        domain: str | None = None,
        command_window: float = DEFAULT_WINDOW,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=timeout, domain=domain)
        self.api = api_prefix(domain)
        self.compiled = compiled
        self.names = compiled.model.nats
        self.timeout = timeout
        self.kv: KeyValue | None = None
        self.fp = compiled.state_fingerprint  # what every snapshot this process writes says it was computed by
        self.catalog = Catalog(nc, compiled, timeout, domain)
        # told of each snapshot a load found computed by another definition (the projector rewrites it)
        self.on_foreign: Callable[[str], None] = lambda key: None
        self.answers = Answers(
            self.js,
            self.names.bucket,
            self.names.replicas,
            command_window,
            f"esfsm answers to command ids of aggregate {compiled.name}",
        )
        # key → (KV revision, stream seq) this process wrote last; only guards the fast path of
        # write_snapshot, so a key forgotten costs one read
        self._written: LRUCache[str, tuple[int, int]] = LRUCache(maxsize=WRITTEN)

    @property
    def durable(self) -> str:
        return contract.durable_name(self.compiled.name)

    def entity_subjects(self, key: str) -> str:
        return contract.entity_subjects(self.names.events, key)

    def subject(self, key: str, event_type: str) -> str:
        return contract.event_subject(self.names.events, key, event_type)

    def kv_subject(self, key: str) -> str:
        return contract.kv_subject(self.names.bucket, key)

    async def ensure(self) -> None:
        """Create or update the stream, the bucket and the durable consumer; StoreError
        saying so when the server has no JetStream (or it does not answer)."""
        try:
            await self._ensure()
        except NO_JETSTREAM as err:
            raise no_jetstream(self.api, err) from None

    def stream_config(self) -> StreamConfig:
        return StreamConfig(
            name=self.names.stream,
            subjects=[contract.stream_subjects(self.names.events)],
            storage=StorageType.FILE,
            num_replicas=self.names.replicas,
            duplicate_window=DUPLICATE_WINDOW,
            allow_direct=True,
            allow_atomic=True,
        )

    async def _ensure(self) -> None:
        config = self.stream_config()
        try:
            await self.js.stream_info(self.names.stream)
            await self.js.update_stream(config)
        except NotFoundError:
            await self.js.add_stream(config)
        try:
            self.kv = await self.js.key_value(self.names.bucket)
        except (NotFoundError, BadRequestError):
            self.kv = await self.js.create_key_value(
                KeyValueConfig(
                    bucket=self.names.bucket,
                    history=1,
                    replicas=self.names.replicas,
                    direct=True,
                    description=f"esfsm state of aggregate {self.compiled.name}",
                )
            )
        bucket = await self.js.stream_info(contract.kv_stream(self.names.bucket))
        if bucket.config.num_replicas != self.names.replicas:  # `replicas` changed (say, moved to a cluster)
            bucket.config.num_replicas = self.names.replicas
            await self.js.update_stream(bucket.config)
        await self.js.add_consumer(
            self.names.stream,
            ConsumerConfig(
                durable_name=self.durable,
                filter_subject=contract.stream_subjects(self.names.events),
                ack_wait=10,
                max_ack_pending=20_000,
                description=f"esfsm snapshots of aggregate {self.compiled.name}",
                headers_only=True,  # the snapshot writer reads subjects and sequences, never the events themselves
            ),
        )
        await self.answers.ensure()
        await self.catalog.ensure()

    # -- events --------------------------------------------------------------

    async def append(self, key: str, expected_seq: int, events: Sequence[Outgoing]) -> int:
        return await append(self.nc, self.entity_subjects(key), expected_seq, events, self.timeout)

    def append_one(self, key: str, expected_seq: int, event: Outgoing, then: Answer) -> None:
        """Start a single-event append now; then gets its ack (see jetstream.append_one)."""
        append_one(self.nc, self.entity_subjects(key), expected_seq, event, self.timeout, then)

    async def last_seq(self, key: str) -> int:
        """The sequence of the entity's last event (0: none). On a replicated stream the
        leader is asked: any replica answers a direct get, and one that has not applied the
        latest append yet would let a command be rejected on a stale state."""
        if self.names.replicas > 1:
            return await self._last_seq_from_leader(key)
        last = await last_message(self.nc, self.names.stream, self.entity_subjects(key), self.timeout, self.api)
        return last.seq if last else 0

    async def _last_seq_from_leader(self, key: str) -> int:
        subjects = self.entity_subjects(key)
        what = f"a read of {subjects}"
        subject = f"{self.api}.STREAM.MSG.GET.{self.names.stream}"
        reply = await api_request(self.nc, subject, {"last_by_subj": subjects}, self.timeout, what)
        error = reply.get("error")
        if error:
            if error.get("code") == 404:
                return 0
            raise api_failure(error, what)
        return int(reply["message"]["seq"])

    async def find_msg_id(self, key: str, after_seq: int, msg_id: str) -> int | None:
        """The sequence of the entity's message with msg_id stored after after_seq, if any."""
        async with aclosing(self._read(key, after_seq)) as stored_events:
            async for stored in stored_events:
                if stored.headers.get(MSG_ID) == msg_id:
                    return stored.seq
        return None

    def _read(self, key: str, after_seq: int) -> AsyncGenerator[Stored, None]:
        """The entity's stored messages after after_seq; read it under contextlib.aclosing, so a
        reader that stops early (or fails) closes the direct get it started."""
        return read_subject(self.nc, self.names.stream, self.entity_subjects(key), after_seq, self.timeout, self.api)

    async def catch_up(self, entity: Entity) -> Entity:
        """Fold every event stored after entity.seq into entity (in place) and return it."""
        async with aclosing(self._read(entity.state.key, entity.seq)) as stored_events:
            async for stored in stored_events:
                fold(self.compiled, entity, stored.seq, stored.body)
        return entity

    async def history(self, key: str) -> list[bytes]:
        """The entity's events as stored (reading.py turns them into events)."""
        async with aclosing(self._read(key, 0)) as stored_events:
            return [stored.body async for stored in stored_events]

    # -- snapshots -----------------------------------------------------------

    async def snapshot(self, key: str) -> tuple[Entity | None, int]:
        """The KV snapshot of key and its revision (None, 0 when there is none)."""
        assert self.kv is not None
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None, 0
        if entry.value is None:
            return None, entry.revision or 0
        return Entity.from_json(entry.value), entry.revision or 0

    def base(self, key: str, snapshot: Entity | None) -> Entity:
        """Where a fold of key's events starts: its snapshot when this definition wrote it,
        otherwise the initial state (with the snapshot's remembered answers: they stay true)."""
        if snapshot is not None and snapshot.fp == self.fp:
            return snapshot
        commands = snapshot.commands if snapshot is not None else None
        return Entity(self.compiled.initial_state(key), commands=commands or OrderedDict())

    async def load(self, key: str) -> Entity:
        """The entity as of now: its snapshot, caught up from the stream (repairs a lagging
        snapshot). A snapshot another definition computed (or one from before snapshots named
        theirs) is not trusted: the entity is replayed from its events, and on_foreign(key)
        asks the snapshot writer to rewrite it."""
        snapshot, _ = await self.snapshot(key)
        entity = self.base(key, snapshot)
        if snapshot is not None and entity is not snapshot:
            self.on_foreign(key)
        return await self.catch_up(entity)

    async def save_snapshot(self, entity: Entity, revision: int) -> int:
        """Write entity if its snapshot is still at revision; returns the new revision.

        Raises KeyWrongLastSequenceError when another writer got there first.
        """
        assert self.kv is not None
        key, seq, value = entity.state.key, entity.seq, entity.to_json(self.snapshot_limit, self.fp)  # before any await
        if revision:
            written = await kv_update(self.nc, self.kv_subject(key), value, revision, self.timeout)
        else:
            written = await self.kv.create(key, value)
        self._note_written(key, written, seq)
        return written

    def _note_written(self, key: str, revision: int, seq: int) -> None:
        self._written[key] = (revision, seq)

    @property
    def snapshot_limit(self) -> int:
        """The largest KV value a write can carry: max_payload less its headers."""
        return self.nc.max_payload - KV_HEADROOM

    def can_write_over(self, key: str, newer_than: int, cached: Entity | None, revision_hint: int) -> bool:
        """Whether cached may overwrite revision_hint without reading the snapshot first: this
        process wrote that revision, and cached is at least as recent as it and newer_than."""
        written = self._written.get(key)
        return bool(
            revision_hint
            and cached is not None
            and written is not None
            and written[0] == revision_hint
            and cached.seq >= max(newer_than, written[1])
        )

    async def write_over(self, writes: list[tuple[Entity, int]]) -> list[int | BaseException]:
        """Compare-and-set writes of several entities over the revisions given, WRITE_WINDOW in
        flight at a time (no task each); per entity the new revision or the error.

        In windows, not all at once: a cycle at 100,000 entities holds thousands of writes, and
        the commands sent while such a burst was queued waited behind it in the server and in
        this loop (deposits' p99 went from ~60 to ~140 ms; in windows it stays at ~60 ms,
        docs/benchmarks.md)."""
        results: list[int | BaseException] = []
        for start in range(0, len(writes), WRITE_WINDOW):
            results.extend(await self._write_window(writes[start : start + WRITE_WINDOW]))
        return results

    async def _write_window(self, writes: list[tuple[Entity, int]]) -> list[int | BaseException]:
        assert self.kv is not None
        mux = requester(self.nc)
        await mux.ready()
        sent: list[tuple[str, str, int, asyncio.Future[tuple[bytes, dict[str, str] | None]] | BaseException]] = []
        for entity, revision in writes:
            key, seq = entity.state.key, entity.seq
            subject = self.kv_subject(key)
            try:
                value = entity.to_json(self.snapshot_limit, self.fp)
                sent.append((key, subject, seq, mux.send(subject, value, self.timeout, kv_update_headers(revision))))
            except Exception as err:  # noqa: BLE001 - disconnected, say: nothing went out; reported per entity
                sent.append((key, subject, seq, err))
        results: list[int | BaseException] = []
        for key, subject, seq, future in sent:
            try:
                if isinstance(future, BaseException):
                    raise future
                data, _ = await future
                written = kv_update_result(subject, data)
            except Exception as err:  # noqa: BLE001 - reported per entity, the caller decides
                results.append(err)
                continue
            self._note_written(key, written, seq)
            results.append(written)
        return results

    @staticmethod
    def _beyond(cached: Entity, snapshot: Entity | None, ours: bool) -> bool:
        """Whether cached may replace snapshot without moving it backwards: newer, or (for one
        another definition computed) as recent."""
        return snapshot is None or cached.seq > snapshot.seq or (not ours and cached.seq >= snapshot.seq)

    async def write_snapshot(
        self, key: str, newer_than: int, cached: Entity | None = None, tries: int = 5, revision_hint: int = 0
    ) -> int:
        """Bring key's snapshot to at least stream sequence newer_than; returns the revision
        written (0 if it already was). Safe to run anywhere, any number of times; never
        moves a snapshot backwards. Raises StoreError when it could not (the caller retries).

        A snapshot another definition computed is stale whatever its sequence, and rewritten
        from the events; but one written under a definition registered after ours is never
        overwritten (NewerDefinition when it lags: a newer runtime brings it up to date).

        With revision_hint (the revision this process wrote last) and a warm entity at least
        as recent as what it wrote then, it first tries a single compare-and-set write,
        without reading the snapshot."""
        if self.can_write_over(key, newer_than, cached, revision_hint):
            assert cached is not None
            try:
                return await self.save_snapshot(cached, revision_hint)
            except (KeyWrongLastSequenceError, BadRequestError):
                pass  # someone else wrote it: read, then decide
        for attempt in range(tries):
            if attempt:
                await asyncio.sleep(0.05 * attempt)  # a raced write, or a replica that lags: let it settle
            snapshot, revision = await self.snapshot(key)
            ours = snapshot is None or snapshot.fp == self.fp
            if not ours:
                assert snapshot is not None
                if snapshot.fp is not None and await self.catalog.newer(snapshot.fp):
                    if snapshot.seq >= newer_than:
                        return 0
                    raise NewerDefinition(key, snapshot.fp)
            elif snapshot is not None and snapshot.seq >= newer_than:
                return 0
            if cached is not None and cached.seq >= newer_than and self._beyond(cached, snapshot, ours):
                entity = cached
            else:
                entity = await self.catch_up(self.base(key, snapshot))
                if entity.seq < newer_than:  # read from a replica that has not got it yet
                    cached = None
                    continue
            try:
                return await self.save_snapshot(entity, revision)
            except (KeyWrongLastSequenceError, BadRequestError) as err:
                log.debug("snapshot of %s raced (%s); retrying", key, err)
                cached = None
        raise StoreError(f"snapshot of {key!r} not brought to stream sequence {newer_than} in {tries} attempts")
