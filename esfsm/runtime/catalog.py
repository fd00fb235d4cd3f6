"""What an aggregate's stream may hold, and which definitions have served it.

A stream outlives every version of its definition, and neither an event's
version nor (past the server's 100,000 subjects per stream info reply) its
type can be learned without reading the stream. So the runtime keeps a
catalog in the KV bucket `<bucket>_catalog` (contract.catalog_bucket):

* `events.<type>.<version>` — created *before* the first append of that type
  and version by this process (a per-process set makes every later append
  free). The catalog over-approximates: "may be stored".
* `states.<state>` — a state a command left an entity in.
* `scanned` — the stream's subjects were read once (`bootstrap`): every type
  found there is noted as version 1, as every event stored before versions
  existed is.
* `definitions.<state fingerprint>` — created when a runtime starts, its
  value what that definition reads (event names, versions, former names) and
  its KV revision the order of registration: a later revision is a newer
  definition. `esfsm rebuild` deletes and recreates its own, so a rollback's
  definition becomes the newest again.

`stream_contents` answers `esfsm validate --against nats://…` and `esfsm run`'s
start-up check from it without writing anything (esfsm/stored.py judges).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import orjson
from cachetools import TTLCache
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig
from nats.js.errors import BadRequestError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from esfsm import contract
from esfsm.compiler import CompiledAggregate
from esfsm.runtime.jetstream import api_failure, api_prefix, api_request
from esfsm.stored import StreamContents

log = logging.getLogger("esfsm.catalog")
SCANNED = "scanned"
EVENTS, STATES, DEFINITIONS = "events.", "states.", "definitions."
PAGE_TIMEOUT = 30.0  # seconds: a page of 100,000 subjects takes the server a while
ORDER_TTL = 10.0  # seconds a definition's place in the order (newer than ours or not) is trusted


def event_key(event_type: str, version: int) -> str:
    return f"{EVENTS}{event_type}.{version}"


def state_key(state: str) -> str:
    return f"{STATES}{state}"


def definition_key(state_fingerprint: str) -> str:
    return f"{DEFINITIONS}{state_fingerprint}"


def definition_record(compiled: CompiledAggregate) -> dict[str, Any]:
    """What a registered definition reads: enough for an older runtime to tell whether the
    events it cannot read are known to it (a rolling upgrade) or to nobody."""
    return {
        "aggregate": compiled.name,
        "state_fingerprint": compiled.state_fingerprint,
        "events": {
            name: {"version": event.version, "formerly": list(event.formerly)}
            for name, event in compiled.model.events.items()
        },
        "states": sorted(compiled.model.states),
        "registered": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def reads(record: Mapping[str, Any], event_type: str, version: int) -> bool:
    """Whether a registered definition (its record) reads stored events of type at version."""
    for name, event in (record.get("events") or {}).items():
        if event_type == name or event_type in (event.get("formerly") or ()):
            return version <= int(event.get("version", 1))
    return False


async def subject_pages(
    nc: Client, api: str, stream: str, subjects: str, timeout: float = PAGE_TIMEOUT
) -> AsyncIterator[dict[str, int]]:
    """The stream's subjects matching subjects, with their message counts, a page at a time:
    a stream info reply lists at most 100,000 (nats-py's stream_info asks for the first only)."""
    request = f"{api}.STREAM.INFO.{stream}"
    offset = 0
    while True:
        reply = await api_request(nc, request, {"subjects_filter": subjects, "offset": offset}, timeout, request)
        error = reply.get("error")
        if error:
            raise api_failure(error, request)
        page = (reply.get("state") or {}).get("subjects") or {}
        if page:
            yield page
        offset = int(reply.get("offset") or 0) + len(page)
        if not page or offset >= int(reply.get("total") or 0):
            return


async def stored_types(nc: Client, api: str, stream: str, events: str) -> set[str]:
    """Every event type name the stream's subjects (`<events>.<key>.<type>`) hold."""
    found: set[str] = set()
    prefix = f"{events}."
    async for page in subject_pages(nc, api, stream, contract.stream_subjects(events)):
        for subject in page:
            rest = subject[len(prefix) :].split(".", 1)
            if len(rest) == 2:
                found.add(rest[1])
    return found


class Catalog:
    """The catalog bucket of one aggregate, as one runtime process keeps and reads it."""

    def __init__(self, nc: Client, compiled: CompiledAggregate, timeout: float = 5.0, domain: str | None = None):
        self.nc = nc
        self.compiled = compiled
        self.names = compiled.model.nats
        self.bucket = contract.catalog_bucket(self.names.bucket)
        self.js = nc.jetstream(timeout=timeout, domain=domain)
        self.api = api_prefix(domain)
        self.kv: KeyValue | None = None
        self.events: set[tuple[str, int]] = set()  # noted by (or found noted for) this process
        self.states: set[str] = set()
        self.revision = 0  # the KV revision of this definition's registration
        self._order: TTLCache[str, bool] = TTLCache(maxsize=64, ttl=ORDER_TTL)  # fingerprint → newer than ours

    async def open(self) -> KeyValue | None:
        """The bucket if it exists (nothing is created)."""
        if self.kv is None:
            try:
                self.kv = await self.js.key_value(self.bucket)
            except (NotFoundError, BadRequestError):
                return None
        return self.kv

    async def ensure(self) -> None:
        if await self.open() is None:
            self.kv = await self.js.create_key_value(
                KeyValueConfig(
                    bucket=self.bucket,
                    history=1,
                    replicas=self.names.replicas,
                    direct=True,
                    description=f"esfsm catalog of aggregate {self.compiled.name}: stored event types and "
                    "versions, states, definitions",
                )
            )

    # -- noting what is stored (before it is) ---------------------------------------

    def knows(self, event_type: str, version: int, state: str) -> bool:
        """Whether an append of event_type at version leaving an entity in state needs no note
        first: the fast path's check (no await)."""
        return (event_type, version) in self.events and state in self.states

    async def note(self, events: Iterable[tuple[str, int]], state: str) -> None:
        """Create the catalog entries of events (type, version) and state that this process has
        not noted yet; an entry that exists already is fine."""
        for event_type, version in events:
            if (event_type, version) not in self.events:
                await self._create(event_key(event_type, version))
                self.events.add((event_type, version))
        if state not in self.states:
            await self._create(state_key(state))
            self.states.add(state)

    async def _create(self, key: str, value: bytes = b"") -> int:
        assert self.kv is not None, "Catalog.ensure first"
        try:
            return await self.kv.create(key, value)
        except (BadRequestError, KeyNotFoundError):  # it exists (KeyWrongLastSequenceError is one); or
            return 0  # it does, and nats-py's check of a tombstone asked a replica that has not got it yet

    async def bootstrap(self) -> bool:
        """Once per catalog: note every type the stream's subjects hold as version 1, and every
        state of this definition (where an entity stored before the catalog may be). True if it
        scanned now."""
        assert self.kv is not None, "Catalog.ensure first"
        try:
            await self.kv.get(SCANNED)
            return False
        except KeyNotFoundError:
            pass
        types = await stored_types(self.nc, self.api, self.names.stream, self.names.events)
        for event_type in sorted(types):
            await self._create(event_key(event_type, 1))
        for state in sorted(self.compiled.model.states):
            await self._create(state_key(state))
        await self._create(SCANNED, orjson.dumps({"types": len(types)}))
        if types:  # a stream written before the catalog existed
            log.info(
                "catalogued the event types stored before the catalog existed",
                extra={"fields": {"aggregate": self.compiled.name, "stream": self.names.stream, "types": len(types)}},
            )
        return True

    # -- definitions ------------------------------------------------------------

    async def register(self, again: bool = False) -> bool:
        """Register this definition (its revision orders it among the others); True if it was
        not registered before. again: delete and recreate it, so that it becomes the newest."""
        assert self.kv is not None, "Catalog.ensure first"
        key = definition_key(self.compiled.state_fingerprint)
        value = orjson.dumps(definition_record(self.compiled))
        if again:
            try:
                await self.kv.delete(key)
            except KeyNotFoundError:
                pass
        created = await self._create(key, value)
        if created:
            self.revision = created
            return True
        entry = await self.kv.get(key)
        self.revision = entry.revision or 0
        return False

    async def definitions(self) -> dict[str, tuple[int, dict[str, Any]]]:
        """Every registered definition: state fingerprint → (revision, record)."""
        found: dict[str, tuple[int, dict[str, Any]]] = {}
        if await self.open() is None:
            return found
        assert self.kv is not None
        for key in await self._keys(DEFINITIONS):
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:  # deleted (re-registered by a rebuild) meanwhile
                continue
            if entry.value:
                found[key[len(DEFINITIONS) :]] = (entry.revision or 0, orjson.loads(entry.value))
        return found

    async def newer(self, state_fingerprint: str) -> bool:
        """Whether the definition of state_fingerprint was registered after ours (then its
        snapshots are never overwritten by this process). An unregistered one is not newer."""
        cached = self._order.get(state_fingerprint)
        if cached is not None:
            return cached
        assert self.kv is not None, "Catalog.ensure first"
        try:
            entry = await self.kv.get(definition_key(state_fingerprint))
            newer = (entry.revision or 0) > self.revision
        except KeyNotFoundError:
            newer = False
        self._order[state_fingerprint] = newer
        return newer

    # -- reading ----------------------------------------------------------------------

    async def _keys(self, prefix: str = "") -> list[str]:
        """The catalog's keys (from its stream's subjects: no consumer needed)."""
        kv_prefix = f"$KV.{self.bucket}."
        keys: list[str] = []
        stream = contract.kv_stream(self.bucket)
        async for page in subject_pages(self.nc, self.api, stream, f"{kv_prefix}{prefix}>"):
            keys.extend(subject[len(kv_prefix) :] for subject in page)
        return keys

    async def contents(self) -> tuple[dict[str, set[int]], frozenset[str] | None]:
        """What the catalog says is stored, without writing: (type → versions, states). Before
        a bootstrap, the stream's subjects are read here instead (versions 1, states unknown)."""
        versions: dict[str, set[int]] = {}
        states: set[str] = set()
        scanned = False
        if await self.open() is not None:
            for key in await self._keys():
                if key.startswith(EVENTS):
                    event_type, _, version = key[len(EVENTS) :].rpartition(".")
                    if version.isdigit():
                        versions.setdefault(event_type, set()).add(int(version))
                elif key.startswith(STATES):
                    states.add(key[len(STATES) :])
                scanned = scanned or key == SCANNED
        if not scanned:
            for event_type in await stored_types(self.nc, self.api, self.names.stream, self.names.events):
                versions.setdefault(event_type, set()).add(1)
        return versions, frozenset(states) if scanned else None

    async def count(self, event_type: str) -> int | None:
        """How many events of event_type (as stored: by its subject) the stream holds, from an
        ephemeral consumer's pending count; None when it cannot be counted."""
        config = ConsumerConfig(
            filter_subject=f"{self.names.events}.*.{event_type}",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            mem_storage=True,
            inactive_threshold=30.0,
            description="esfsm: counting the events of one type",
        )
        try:
            info = await self.js.add_consumer(self.names.stream, config)
        except Exception as err:  # noqa: BLE001 - a count is a courtesy: the check stands without it
            log.debug("counting %s failed: %s: %s", event_type, type(err).__name__, err)
            return None
        try:
            await self.js.delete_consumer(self.names.stream, info.name)
        except Exception as err:  # noqa: BLE001 - it goes away by itself after inactive_threshold
            log.debug("deleting the counting consumer failed: %s", type(err).__name__)
        return int(info.num_pending or 0)


async def stream_contents(
    nc: Client, compiled: CompiledAggregate, timeout: float = 5.0, domain: str | None = None
) -> StreamContents:
    """What compiled's stream holds, read-only: types x versions from the catalog (the stream's
    subjects when it was never bootstrapped), a count per stored type name, the states entities
    may be in (None: unknown). Empty when there is no stream."""
    catalog = Catalog(nc, compiled, timeout, domain)
    try:
        await catalog.js.stream_info(catalog.names.stream)
    except NotFoundError:
        return StreamContents({})
    versions, states = await catalog.contents()
    counts = {event_type: await catalog.count(event_type) for event_type in sorted(versions)}
    return StreamContents({t: frozenset(v) for t, v in versions.items()}, counts, states)
