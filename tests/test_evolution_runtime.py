"""Definitions change, events stay (issue #14), on a real server with whole runtimes: history
written under v1, the runtime restarted on v2, commands decided on the fold of the upcast events,
and every snapshot ends up equal to reading.replay under v2 (invariant 8: after any change that
`esfsm run` agrees to serve, an entity's state is the fold of its upcast events under the running
definition). A definition that cannot replay the stream is refused before anything is written."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from evolution_runtime_support import (
    COUNT_DEPOSITS,
    DEPOSIT_V2,
    FROZEN_RETIRED,
    NO_FROZEN,
    bank,
    replayed,
    send,
    service,
    serving,
    settled,
)

from nats_support import ROOT, run, start_server

from esfsm import contract
from esfsm.compiler import CompiledAggregate
from esfsm.runtime.catalog import Catalog
from esfsm.runtime.connection import ConnectOptions, connect
from esfsm.runtime.server import EmbeddedServer
from esfsm.runtime.store import AggregateStore


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    server = start_server(tmp_path / "nats")
    yield server
    server.stop()


async def history_under(url: str, v1: CompiledAggregate, commands: list[tuple[str, str, dict[str, object]]]) -> None:
    """Serve commands with a v1 runtime and wait until their snapshots are written (under v1)."""
    async with serving(url, v1) as runtime:
        for command, key, payload in commands:
            reply = await send(runtime, command, key, payload)
            assert reply["accepted"], reply
        store = service(runtime).store
        for key in {key for _, key, _ in commands}:
            last = await store.last_seq(key)
            snapshot = await settled(store, key, lambda s, last=last: s is not None and s.seq == last)
            assert snapshot is not None and snapshot.fp == v1.state_fingerprint


@pytest.mark.parametrize(
    "change", [COUNT_DEPOSITS, DEPOSIT_V2], ids=["a-fixed-apply", "a-new-event-version-with-upcaster"]
)
def test_snapshots_follow_the_definition(
    server: EmbeddedServer, tmp_path: Path, change: tuple[tuple[str, str], ...]
) -> None:
    """Two accounts with history under v1; on v2 one gets a command, the other is only loaded (a
    rejected command): both snapshots are rewritten under v2 and equal the replay under v2, and
    the command was decided on that replay."""
    _, v1 = bank(tmp_path, "v1")
    _, v2 = bank(tmp_path, "v2", *change)
    assert v1.state_fingerprint != v2.state_fingerprint

    async def scenario() -> None:
        await history_under(
            server.url,
            v1,
            [
                ("open_account", "a", {"owner": "ann", "initial_balance": 100}),
                ("deposit", "a", {"amount": 5}),
                ("open_account", "b", {"owner": "bob", "initial_balance": 200}),
                ("deposit", "b", {"amount": 7}),
            ],
        )
        async with serving(server.url, v2) as runtime:
            store = service(runtime).store
            reply = await send(runtime, "deposit", "a", {"amount": 3})
            assert reply["accepted"] and reply["version"] == 3, reply
            assert reply["events"][0]["eventversion"] == v2.events["funds_deposited"].version
            rejected = await send(runtime, "withdraw", "b", {"amount": 10**6})
            assert rejected["code"] == 422 and "insufficient funds" in rejected["message"], rejected
            for key, balance in (("a", 108), ("b", 207)):
                expected = await replayed(store, v2, key)
                assert expected.data["balance"] == balance
                if change is COUNT_DEPOSITS:
                    assert expected.data["deposits"] == (2 if key == "a" else 1)
                snapshot = await settled(
                    store, key, lambda s: s is not None and s.fp == v2.state_fingerprint and s.seq > 0
                )
                assert snapshot is not None and snapshot.fp == v2.state_fingerprint, snapshot
                assert snapshot.state == expected

    run(scenario())


def test_a_snapshot_from_before_snapshots_named_their_definition_is_not_trusted(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    """A snapshot without fp, with a wrong balance in it: the runtime decides on the replay,
    and the snapshot writer replaces it."""
    _, v1 = bank(tmp_path, "v1")

    async def scenario() -> None:
        await history_under(server.url, v1, [("open_account", "old", {"owner": "ann", "initial_balance": 100})])
        nc = await connect([server.url], ConnectOptions(name="old-snapshot"))
        try:
            store = AggregateStore(nc, v1)
            await store.ensure()
            snapshot, revision = await store.snapshot("old")
            assert snapshot is not None
            snapshot.state = snapshot.state.__class__("old", "open", {"owner": "ann", "balance": 999}, 1)
            assert store.kv is not None
            await store.kv.update("old", snapshot.to_json(), last=revision)  # no fp: as written before
        finally:
            await nc.close()
        async with serving(server.url, v1) as runtime:
            refused = await send(runtime, "withdraw", "old", {"amount": 500})
            assert refused["code"] == 422, refused  # decided on the replay (100), not the snapshot (999)
            store = service(runtime).store
            rewritten = await settled(store, "old", lambda s: s is not None and s.fp == v1.state_fingerprint)
            assert rewritten is not None and rewritten.state == await replayed(store, v1, "old")

    run(scenario())


def test_run_refuses_a_definition_that_cannot_replay_the_stream_and_serves_the_safe_change(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    """The walk-through of issue #14: acc-1 frozen under v1, then the frozen state, its commands
    and events removed. `esfsm run` exits 1 naming account_frozen, its version and count, with no
    traceback and nothing written. With account_frozen retired (a frozen account stays open) it
    serves, and the deposit is decided on the fold of the events under the new definition."""
    _, v1 = bank(tmp_path, "v1")
    unsafe_path, unsafe = bank(tmp_path, "unsafe", *NO_FROZEN)
    _, safe = bank(tmp_path, "safe", *FROZEN_RETIRED)

    async def stream_state() -> tuple[int, set[str], bool]:
        nc = await connect([server.url], ConnectOptions(name="observer"))
        try:
            js = nc.jetstream()
            info = await js.stream_info(v1.model.nats.stream)
            catalog = Catalog(nc, v1)
            registered = set(await catalog.definitions())
            consumers = [c.name for c in await js.consumers_info(v1.model.nats.stream)]
            return info.state.messages, registered, contract.durable_name("bankaccount") in consumers
        finally:
            await nc.close()

    run(
        history_under(
            server.url,
            v1,
            [
                ("open_account", "acc-1", {"owner": "ann", "initial_balance": 100}),
                ("freeze", "acc-1", {}),
                ("open_account", "acc-2", {"owner": "bob", "initial_balance": 100}),
            ],
        )
    )
    before = run(stream_state())
    done = subprocess.run(
        [sys.executable, "-m", "esfsm", "run", str(unsafe_path.parent), "--server", server.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 1, done.stderr
    assert "'account_frozen' (version 1, 1 event stored)" in done.stderr, done.stderr
    assert "cannot replay" in done.stderr and "nothing was written" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    after = run(stream_state())
    assert after == before and unsafe.state_fingerprint not in after[1]

    async def safe_change() -> None:
        async with serving(server.url, safe) as runtime:
            reply = await send(runtime, "deposit", "acc-1", {"amount": 50})
            assert reply["accepted"] and reply["state"] == "open", reply
            store = service(runtime).store
            expected = await replayed(store, safe, "acc-1")
            assert expected.state == "open" and expected.data["balance"] == 150
            snapshot = await settled(
                store, "acc-1", lambda s: s is not None and s.fp == safe.state_fingerprint and s.state.version == 3
            )
            assert snapshot is not None and snapshot.state == expected

    run(safe_change())
