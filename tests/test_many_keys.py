"""More than 100,000 entity keys (a stream info reply lists at most 100,000 subjects): the start-up
check, the catalog's bootstrap and rebuild's entity_keys see every one (issue #14, "What a stream
holds, without reading it all").

The events are real bank account events, published acknowledged in windows of WINDOW (not one
request each), in about 5 s; the rebuild reads the stream once and writes every snapshot."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from nats_support import run, start_server

from esfsm import contract, reading
from esfsm.project import Project
from esfsm.runtime.catalog import stream_contents, subject_pages
from esfsm.runtime.connection import ConnectOptions, connect
from esfsm.runtime.jetstream import requester
from esfsm.runtime.rebuild import RebuildFailed, entity_keys, rebuild
from esfsm.runtime.startup import DefinitionRefused, check
from esfsm.runtime.store import AggregateStore

STORED = json.loads((Path(__file__).parent / "fixtures" / "stored" / "c75067f.json").read_text())
OPENED = json.loads(STORED["bankaccount/acc-1"]["events"][0])
COUNT = 100_000 + 500
WINDOW = 2_000  # acknowledged publishes in flight
LAST = "zz-audited"  # sorts after every other key: its subject is on the second page


def opened(key: str, event_type: str = "account_opened") -> bytes:
    return json.dumps(dict(OPENED, subject=key, entitykey=key, id=f"{key}-1", type=event_type)).encode()


def test_start_up_bootstrap_and_rebuild_see_past_the_first_100000_subjects(project: Project, tmp_path: Path) -> None:
    server = start_server(tmp_path / "nats")
    compiled = project.aggregates["bankaccount"]
    events = compiled.model.nats.events
    keys = [f"k{i:06d}" for i in range(COUNT)]

    async def scenario() -> None:
        nc = await connect([server.url], ConnectOptions(name="many-keys"))
        try:
            store = AggregateStore(nc, compiled, timeout=30)
            await store.js.add_stream(store.stream_config())
            started = time.monotonic()
            mux = requester(nc)
            await mux.ready()
            for start in range(0, COUNT, WINDOW):
                sent = [
                    mux.send(contract.event_subject(events, key, "account_opened"), opened(key), 30.0)
                    for key in keys[start : start + WINDOW]
                ]
                for data, _ in await asyncio.gather(*sent):
                    assert b'"seq"' in data, data
            await mux.send(contract.event_subject(events, LAST, "account_audited"), opened(LAST, "account_audited"), 30)
            published = time.monotonic() - started
            pages = [page async for page in subject_pages(nc, store.api, compiled.model.nats.stream, f"{events}.>")]
            assert len(pages) == 2 and f"{events}.{LAST}.account_audited" in pages[1]  # not on the first page

            assert await entity_keys(store) == [*keys, LAST]
            contents = await stream_contents(nc, compiled, 30.0)
            assert contents.versions == {"account_opened": frozenset({1}), "account_audited": frozenset({1})}
            assert contents.counts == {"account_opened": COUNT, "account_audited": 1}
            with pytest.raises(DefinitionRefused, match=r"'account_audited' \(version 1, 1 event stored\)"):
                await check(nc, compiled)

            await store.ensure()
            assert await store.catalog.bootstrap()
            after = await stream_contents(nc, compiled, 30.0)
            assert after.versions == contents.versions and after.states == frozenset(compiled.model.states)

            started = time.monotonic()
            with pytest.raises(RebuildFailed) as failed:
                await rebuild(store)
            rebuilt = time.monotonic() - started
            assert failed.value.rebuilt == COUNT and "'zz-audited'" in str(failed.value)
            assert len(failed.value.failures) == 1
            bucket = await store.js.stream_info(contract.kv_stream(compiled.model.nats.bucket))
            assert bucket.state.messages == COUNT  # one snapshot per entity it could replay
            for key in [*keys[:: COUNT // 50], keys[-1]]:
                snapshot, _ = await store.snapshot(key)
                assert snapshot is not None and snapshot.fp == compiled.state_fingerprint
                assert snapshot.state == reading.replay(compiled, key, [opened(key)])
            assert rebuilt < 60, rebuilt
            assert published < 60, published
        finally:
            await nc.close()

    try:
        run(scenario(), timeout=300)
    finally:
        server.stop()
