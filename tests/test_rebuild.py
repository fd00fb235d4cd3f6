"""`esfsm rebuild` on streams the definition cannot wholly replay, and on streams with more
entity keys than one stream info reply lists (issue #14, "Definitions change, events stay")."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from nats.js.api import StorageType, StreamConfig

from nats_support import ROOT, run, start_server

from esfsm import contract, reading
from esfsm.project import Project
from esfsm.runtime.connection import ConnectOptions, connect
from esfsm.runtime.jetstream import Outgoing
from esfsm.runtime.rebuild import entity_keys
from esfsm.runtime.store import AggregateStore

STORED = json.loads((Path(__file__).parent / "fixtures" / "stored" / "c75067f.json").read_text())
OLD_EVENTS = [json.loads(line) for line in STORED["bankaccount/acc-1"]["events"]]  # opened, deposited, ...


def event(key: str, template: dict[str, object], event_type: str | None = None) -> bytes:
    """A stored bank account event moved to key (and renamed to event_type)."""
    moved = dict(template, subject=key, entitykey=key, id=f"{key}-{template['id']}")
    if event_type:
        moved["type"] = event_type
    return json.dumps(moved).encode()


def test_rebuild_refreshes_every_entity_it_can_replay_and_names_the_ones_it_cannot(
    project: Project, tmp_path: Path
) -> None:
    """Two good accounts around two bad ones (an event type the definition does not know; a
    deposit before the account was opened): the good ones' snapshots are written, the rebuild
    exits 1 with one line per bad entity and their count, and no traceback."""
    server = start_server(tmp_path / "nats")
    compiled = project.aggregates["bankaccount"]
    stored = {
        "a-good": [event("a-good", OLD_EVENTS[0]), event("a-good", OLD_EVENTS[1])],
        "b-bad": [event("b-bad", OLD_EVENTS[0]), event("b-bad", OLD_EVENTS[1], "account_audited")],
        "c-bad": [event("c-bad", OLD_EVENTS[1])],
        "d-good": [event("d-good", OLD_EVENTS[0])],
    }

    async def store_events() -> None:
        nc = await connect([server.url], ConnectOptions(name="rebuild-test"))
        try:
            store = AggregateStore(nc, compiled)
            await store.ensure()
            for key, bodies in stored.items():
                outgoing = [Outgoing(store.subject(key, json.loads(b)["type"]), b, json.loads(b)["id"]) for b in bodies]
                await store.append(key, 0, outgoing)
                assert (await store.snapshot(key))[0] is None  # only the rebuild writes one
        finally:
            await nc.close()

    async def snapshots() -> dict[str, object]:
        nc = await connect([server.url], ConnectOptions(name="rebuild-test"))
        try:
            store = AggregateStore(nc, compiled)
            await store.ensure()
            found = {key: (await store.snapshot(key))[0] for key in stored}
            return {key: entity.state if entity else None for key, entity in found.items()}
        finally:
            await nc.close()

    try:
        run(store_events())
        done = subprocess.run(
            [sys.executable, "-m", "esfsm", "rebuild", "bankaccount", "definitions/", "--server", server.url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=ROOT,
        )
        after = run(snapshots())
    finally:
        server.stop()
    assert done.returncode == 1, done.stderr
    assert after == {
        "a-good": reading.replay(compiled, "a-good", stored["a-good"]),
        "b-bad": None,
        "c-bad": None,
        "d-good": reading.replay(compiled, "d-good", stored["d-good"]),
    }
    assert "2 entities could not be replayed (the other 2 rebuilt" in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("entity ")]
    assert len(lines) == 2, done.stderr
    assert "entity 'b-bad'" in lines[0] and "'account_audited'" in lines[0] and "unknown event type" in lines[0]
    assert "entity 'c-bad'" in lines[1] and "'funds_deposited'" in lines[1] and "not a valid transition" in lines[1]
    assert "Traceback" not in done.stderr and "never retrieved" not in done.stderr, done.stderr


def test_entity_keys_reads_past_the_100000_subjects_of_one_stream_info_reply(project: Project, tmp_path: Path) -> None:
    """A stream info reply lists at most 100,000 subjects (and nats-py asks for the first page
    only): entity_keys pages through them all, and a key with two event types counts once."""
    server = start_server(tmp_path / "nats")
    compiled = project.aggregates["bankaccount"]
    events = compiled.model.nats.events
    count = 100_000 + 300
    keys = [f"k{i:06d}" for i in range(count)]

    async def scenario() -> None:
        nc = await connect([server.url], ConnectOptions(name="rebuild-keys"))
        try:
            store = AggregateStore(nc, compiled)
            await store.js.add_stream(
                StreamConfig(
                    name=compiled.model.nats.stream,
                    subjects=[contract.stream_subjects(events)],
                    storage=StorageType.MEMORY,
                )
            )
            for key in keys:
                await nc.publish(f"{events}.{key}.account_opened", b"{}")
            for key in keys[:200]:  # a second subject of the same entities
                await nc.publish(f"{events}.{key}.funds_deposited", b"{}")
            await nc.flush()
            deadline = time.monotonic() + 30
            while (info := await store.js.stream_info(compiled.model.nats.stream)).state.messages < count + 200:
                assert time.monotonic() < deadline, info.state
                await asyncio.sleep(0.1)
            first_page = await store.js.stream_info(
                compiled.model.nats.stream, subjects_filter=contract.stream_subjects(events)
            )
            assert len(first_page.state.subjects or {}) == 100_000  # what entity_keys used to see
            assert await entity_keys(store) == keys
        finally:
            await nc.close()

    try:
        run(scenario())
    finally:
        server.stop()
