"""Streams outlive the code: events and snapshots stored by an earlier esfsm replay the same.

tests/fixtures/stored/c75067f.json holds what esfsm at commit c75067f (before
the one command path and the one read path) stored for a bank account and an
order: its CloudEvents JSON, the state it reported, and the KV snapshot its
runtime wrote. The current read path must give the same state from them, on
both engines and from a real stream; a command id answered back then is still
answered from the old snapshot.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nats_support import LoopThread

from esfsm import reading
from esfsm.contract import COMMAND_ID_HEADER
from esfsm.engine import MemoryEngine
from esfsm.project import Project
from esfsm.runtime.connection import ConnectOptions, connect
from esfsm.runtime.entity import Entity
from esfsm.runtime.jetstream import Outgoing
from esfsm.runtime.service import AggregateService
from esfsm.runtime.store import AggregateStore
from esfsm.values import EntityState

STORED = json.loads((Path(__file__).parent / "fixtures" / "stored" / "c75067f.json").read_text())
ENTITIES = sorted(name for name in STORED if not name.startswith("_"))


def state_of(value: dict[str, Any]) -> EntityState:
    return EntityState(value["key"], value["state"], value["data"], value["version"])


@pytest.mark.parametrize("name", ENTITIES)
def test_old_events_replay_to_the_state_reported_then(project: Project, name: str) -> None:
    aggregate, key = name.split("/")
    stored = STORED[name]
    compiled = project.aggregates[aggregate]
    raw = [line.encode() for line in stored["events"]]
    assert reading.replay(compiled, key, raw) == state_of(stored["state"])
    engine = MemoryEngine([compiled])
    engine.record(aggregate, key, [reading.decode(r) for r in raw])
    assert engine.state(aggregate, key) == state_of(stored["state"])
    assert [reading.document(e) for e in engine.history(aggregate, key)] == [json.loads(r) for r in raw]


@pytest.mark.parametrize("name", ENTITIES)
def test_an_old_snapshot_loads_as_the_fold_of_its_events(project: Project, name: str) -> None:
    aggregate, key = name.split("/")
    stored = STORED[name]
    snapshot = Entity.from_json(stored["snapshot"].encode())
    fold = reading.replay(project.aggregates[aggregate], key, [line.encode() for line in stored["events"]])
    assert snapshot.state == fold == state_of(stored["state"])
    assert snapshot.seq == 10 * len(stored["events"])


def test_old_events_and_snapshot_in_a_stream_are_served_by_the_runtime(project: Project, nats_server: Any) -> None:
    """The old bank account's events in a real stream, its old snapshot in KV: the runtime
    loads the same state, answers the old command id from the snapshot, and goes on."""
    stored = STORED["bankaccount/acc-1"]
    compiled = project.aggregates["bankaccount"]
    key = "compat-c75067f"

    def renamed(line: str) -> bytes:  # the same events, under a key of this test's own
        event = json.loads(line)
        event["subject"] = event["entitykey"] = key
        return json.dumps(event).encode()

    loop = LoopThread()

    async def scenario() -> None:
        nc = await connect([nats_server.url], ConnectOptions(name="compat"))
        try:
            store = AggregateStore(nc, compiled)
            await store.ensure()
            await store.js.purge_stream(compiled.model.nats.stream, subject=store.entity_subjects(key))
            raw = [renamed(line) for line in stored["events"]]
            outgoing = [Outgoing(store.subject(key, json.loads(r)["type"]), r, json.loads(r)["id"]) for r in raw]
            seq = await store.append(key, 0, outgoing)
            old = json.loads(stored["snapshot"])
            old.update(key=key, seq=seq)
            assert store.kv is not None
            await store.kv.put(key, json.dumps(old).encode())
            loaded = await store.load(key)
            expected = state_of({**stored["state"], "key": key})
            assert loaded.state == expected == reading.replay(compiled, key, raw)
            service = AggregateService(nc, compiled, store)
            first = json.loads(json.dumps(old["commands"]["c-1"]))
            headers = {"x-ergonats-entity-key": key, "x-username": "ann", COMMAND_ID_HEADER: "c-1"}
            again = await service.process("open_account", b'{"owner": "x", "initial_balance": 500}', headers)
            assert again == first  # answered from the old snapshot's remembered replies
            more = await service.process(
                "deposit", b'{"amount": 5}', {"x-ergonats-entity-key": key, "x-username": "ann"}
            )
            assert more["accepted"] and more["version"] == expected.version + 1
        finally:
            await nc.close()

    try:
        loop.run(scenario())
    finally:
        loop.close()


def test_rebuild_of_a_stream_it_cannot_replay_says_so_in_one_line(project: Project, tmp_path: Path) -> None:
    """An event the definition no longer knows: `esfsm rebuild` exits 1 naming the entity and
    the event, with no traceback and no 'Task exception was never retrieved' (the stream read
    it had started was left open when the fold failed)."""
    import subprocess
    import sys

    from nats_support import start_server

    server = start_server(tmp_path / "nats")
    compiled = project.aggregates["bankaccount"]
    loop = LoopThread()

    async def store_an_unknown_event() -> None:
        nc = await connect([server.url], ConnectOptions(name="unreplayable"))
        try:
            store = AggregateStore(nc, compiled)
            await store.ensure()
            gone = json.loads(STORED["bankaccount/acc-1"]["events"][0])
            gone.update(type="account_audited", subject="k-1", entitykey="k-1")
            body = json.dumps(gone).encode()
            await store.append("k-1", 0, [Outgoing(store.subject("k-1", "account_audited"), body, gone["id"])])
        finally:
            await nc.close()

    try:
        loop.run(store_an_unknown_event())
        done = subprocess.run(
            [sys.executable, "-m", "esfsm", "rebuild", "bankaccount", "definitions/", "--server", server.url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=Path(__file__).parent.parent,
        )
    finally:
        loop.close()
        server.stop()
    assert done.returncode == 1, done.stderr
    assert "entity 'k-1'" in done.stderr and "account_audited" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "never retrieved" not in done.stderr, done.stderr
