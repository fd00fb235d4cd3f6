"""The catalog of what an aggregate's stream may hold (runtime/catalog.py), on a real server:
stream_contents before and after a bootstrap, the notes made before appends, counts per stored
type name, and the order in which definitions were registered (issue #14)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from nats_support import run, start_server

from esfsm import contract
from esfsm.project import Project
from esfsm.runtime.catalog import Catalog, definition_key, reads, stream_contents
from esfsm.runtime.connection import ConnectOptions, connect
from esfsm.runtime.jetstream import Outgoing
from esfsm.runtime.server import EmbeddedServer
from esfsm.runtime.store import AggregateStore
from esfsm.stored import StreamContents, unread

STORED = json.loads((Path(__file__).parent / "fixtures" / "stored" / "c75067f.json").read_text())
OLD_EVENTS = [json.loads(line) for line in STORED["bankaccount/acc-1"]["events"]]  # opened, deposited, ...


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    server = start_server(tmp_path / "nats")
    yield server
    server.stop()


def moved(key: str, template: dict[str, object], event_type: str | None = None, version: int | None = None) -> bytes:
    event = dict(template, subject=key, entitykey=key, id=f"{key}-{template['id']}")
    if event_type:
        event["type"] = event_type
    if version is not None:
        event["eventversion"] = version
    return json.dumps(event).encode()


async def append(store: AggregateStore, key: str, bodies: list[bytes]) -> None:
    outgoing = [Outgoing(store.subject(key, json.loads(b)["type"]), b, json.loads(b)["id"]) for b in bodies]
    await store.append(key, 0, outgoing)


def test_stream_contents_reads_an_old_stream_then_the_catalog(project: Project, server: EmbeddedServer) -> None:
    """A stream written before the catalog existed: stream_contents reads its subjects (every type
    version 1, states unknown) and writes nothing; after the runtime's bootstrap and a note of a
    version 2 event, it reads the catalog: types x versions, counts per type name, states."""
    compiled = project.aggregates["bankaccount"]
    bucket = contract.catalog_bucket(compiled.model.nats.bucket)

    async def scenario() -> tuple[StreamContents, StreamContents, StreamContents, list[str]]:
        nc = await connect([server.url], ConnectOptions(name="catalog-test"))
        try:
            empty = await stream_contents(nc, compiled, 5.0)
            store = AggregateStore(nc, compiled)
            await store.js.add_stream(store.stream_config())
            await append(store, "a", [moved("a", OLD_EVENTS[0]), moved("a", OLD_EVENTS[1])])
            await append(store, "b", [moved("b", OLD_EVENTS[0]), moved("b", OLD_EVENTS[1], "account_audited")])
            before = await stream_contents(nc, compiled, 5.0)
            buckets = [info.config.name for info in await store.js.streams_info()]
            catalog = Catalog(nc, compiled)
            await catalog.ensure()
            assert await catalog.bootstrap()
            assert not await catalog.bootstrap()  # once
            await catalog.note([("funds_deposited", 2)], "open")
            assert catalog.knows("funds_deposited", 2, "open") and not catalog.knows("funds_deposited", 3, "open")
            after = await stream_contents(nc, compiled, 5.0)
            return empty, before, after, buckets
        finally:
            await nc.close()

    empty, before, after, buckets = run(scenario())
    assert empty == StreamContents({})
    assert before.versions == {
        "account_opened": frozenset({1}),
        "funds_deposited": frozenset({1}),
        "account_audited": frozenset({1}),
    }
    assert before.counts == {"account_opened": 2, "funds_deposited": 1, "account_audited": 1}
    assert before.states is None
    assert contract.kv_stream(bucket) not in buckets  # read-only: stream_contents created nothing
    assert after.versions["funds_deposited"] == frozenset({1, 2})
    assert after.states == frozenset(compiled.model.states)
    problems = unread(compiled, after)
    assert [(p.event_type, p.versions, p.count, p.newer) for p in problems] == [
        ("account_audited", (1,), 1, False),
        ("funds_deposited", (2,), 1, True),
    ]


def test_definitions_are_ordered_by_registration_and_a_rebuild_makes_one_newest(
    project: Project, server: EmbeddedServer
) -> None:
    """Two definitions register in turn: the later is newer to the earlier and not the other way
    round; registering the earlier again (what esfsm rebuild does) makes it the newest."""
    first = project.aggregates["bankaccount"]
    second = project.aggregates["bankaccount"]

    async def scenario() -> None:
        nc = await connect([server.url], ConnectOptions(name="catalog-order"))
        try:
            one, two = Catalog(nc, first), Catalog(nc, second)
            two.compiled = type("Other", (), {"state_fingerprint": "f" * 16})()  # type: ignore[assignment]
            await one.ensure()
            await two.ensure()
            assert await one.register()
            assert not await one.register()  # already registered: its revision kept
            two.revision = await two._create(definition_key("f" * 16), b'{"events": {}}')
            assert await one.newer("f" * 16)
            assert not await one.newer("0" * 16)  # never registered: not newer
            assert not await two.newer(first.state_fingerprint)
            await one.register(again=True)
            two._order.clear()
            assert await two.newer(first.state_fingerprint)
            found = await one.definitions()
            assert set(found) == {first.state_fingerprint, "f" * 16}
            assert reads(found[first.state_fingerprint][1], "funds_deposited", 1)
            assert not reads(found[first.state_fingerprint][1], "funds_deposited", 2)
            assert not reads(found[first.state_fingerprint][1], "account_audited", 1)
        finally:
            await nc.close()

    run(scenario())
