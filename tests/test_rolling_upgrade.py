"""A rolling upgrade on one real server (issue #14): runtimes of v1 and v2 of the bank account
serve side by side, v2 storing funds_deposited at version 2 (renamed field, upcaster from 1).
The v1 runtime never applies what it cannot read: a command for an entity holding a version 2
event is answered 503 naming it, nothing is stored, and its snapshot (written under v2, the
newer registered definition) is never overwritten. Entities with only version 1 events keep
working on both; a v1 runtime restarted meanwhile starts (the older side); once v1 is gone,
v2 serves every entity, and every snapshot is the fold of its upcast events under v2."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from evolution_runtime_support import DEPOSIT_V2, bank, replayed, send, service, serving, settled

from nats_support import run, start_server

from esfsm.runtime.server import EmbeddedServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    server = start_server(tmp_path / "nats")
    yield server
    server.stop()


def test_v1_and_v2_side_by_side_then_v2_alone(
    server: EmbeddedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, v1 = bank(tmp_path, "v1")
    _, v2 = bank(tmp_path, "v2", *DEPOSIT_V2)
    caplog.set_level(logging.WARNING)

    async def scenario() -> None:
        async with serving(server.url, v1) as old:
            for key in ("a", "b", "c"):
                assert (await send(old, "open_account", key, {"owner": key, "initial_balance": 100}))["accepted"]
                assert (await send(old, "deposit", key, {"amount": 1}))["accepted"]  # warm in v1
            async with serving(server.url, v2) as new:
                store = service(new).store
                first = await send(new, "deposit", "a", {"amount": 10})
                assert first["accepted"] and first["events"][0]["eventversion"] == 2, first
                last = await store.last_seq("a")

                for _ in range(2):  # answered 503 each time, logged once
                    refused = await send(old, "deposit", "a", {"amount": 5})
                    assert refused["code"] == 503, refused
                    assert "'funds_deposited' version 2" in refused["message"], refused
                assert await store.last_seq("a") == last  # nothing stored
                assert len(service(old).pipeline._unreadable) == 1

                # b and c hold version 1 events only: both runtimes serve them
                assert (await send(old, "deposit", "b", {"amount": 2}))["accepted"]
                assert (await send(new, "deposit", "b", {"amount": 3}))["accepted"]
                assert (await send(old, "deposit", "b", {"amount": 4}))["code"] == 503  # b holds a v2 event now
                assert (await send(old, "deposit", "c", {"amount": 5}))["accepted"]

                # a's snapshot: written under v2, never overwritten by v1's snapshot writer
                snapshot = await settled(store, "a", lambda s: s is not None and s.seq == last)
                assert snapshot is not None and snapshot.fp == v2.state_fingerprint, snapshot
                await asyncio.sleep(3)  # v1's writer had events of a and b to take
                again, _ = await store.snapshot("a")
                assert again is not None and again.fp == v2.state_fingerprint
                assert again.state == await replayed(store, v2, "a")

                # a v1 runtime restarted during the upgrade starts: a newer definition reads it all
                async with serving(server.url, v1) as restarted:
                    assert (await send(restarted, "deposit", "a", {"amount": 1}))["code"] == 503
                    assert (await send(restarted, "deposit", "c", {"amount": 1}))["accepted"]

        # v1 is gone: v2 alone serves every entity, each snapshot the fold of its events under v2
        async with serving(server.url, v2) as new:
            store = service(new).store
            for key, balance in (("a", 111 + 7), ("b", 106 + 7), ("c", 107 + 7)):
                reply = await send(new, "deposit", key, {"amount": 7})
                assert reply["accepted"], reply
                expected = await replayed(store, v2, key)
                assert expected.data["balance"] == balance, (key, expected)
                seq = await store.last_seq(key)
                snapshot = await settled(
                    store, key, lambda s, seq=seq: s is not None and s.seq == seq and s.fp == v2.state_fingerprint
                )
                assert snapshot is not None and snapshot.state == expected, (key, snapshot)

    run(scenario())
    assert "Traceback" not in caplog.text
    crashed = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not crashed, [r.getMessage() for r in crashed]
