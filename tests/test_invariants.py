"""The seven invariants of DESIGN.md, each against a real nats-server.

"Two runtime processes" are two AggregateService instances on two separate
NATS connections (calling process() directly controls which one handles
what); the crash tests use real `esfsm run` processes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import pytest

from nats_support import RuntimeProcess, run, start_server

from esfsm.compiler import CompiledAggregate
from esfsm.events import event_from_json, event_to_json, new_event
from esfsm.project import Project
from esfsm.runtime.entity import Entity, SnapshotTooLarge
from esfsm.runtime.jetstream import ConflictError, Outgoing
from esfsm.runtime.projector import Projector
from esfsm.runtime.rebuild import rebuild
from esfsm.runtime.server import EmbeddedServer
from esfsm.runtime.service import AggregateService
from esfsm.runtime.store import AggregateStore
from esfsm.values import EntityState

ANN = {"x-username": "ann"}


def key() -> str:
    return f"inv-{uuid.uuid4().hex[:10]}"


def headers(k: str, **extra: str) -> dict[str, str]:
    return {"x-ergonats-entity-key": k, **ANN, **extra}


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


@asynccontextmanager
async def processes(url: str, compiled: CompiledAggregate, count: int = 2) -> AsyncIterator[list[AggregateService]]:
    """count independent runtimes for one aggregate, each on its own connection."""
    connections = [await nats.connect(url) for _ in range(count)]
    services = []
    for nc in connections:
        store = AggregateStore(nc, compiled)
        await store.ensure()
        services.append(AggregateService(nc, compiled, store))
    try:
        yield services
    finally:
        for nc in connections:
            await nc.close()


async def stored_events(service: AggregateService, k: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in await service.store.history(k)]


async def open_account(service: AggregateService, k: str, balance: int = 150) -> dict[str, Any]:
    reply = await service.process("open_account", body({"owner": "ann", "initial_balance": balance}), headers(k))
    assert reply["accepted"], reply
    return reply


# 1. Durable --------------------------------------------------------------------


def test_durable_every_accepted_event_is_in_the_stream(nats_server: EmbeddedServer, project: Project) -> None:
    async def scenario() -> None:
        async with processes(nats_server.url, project.aggregates["bankaccount"], 1) as (a,):
            k = key()
            await open_account(a, k)
            replies = await asyncio.gather(
                *[a.process("deposit", body({"amount": i}), headers(k)) for i in range(1, 41)]
            )
            accepted = [e["id"] for r in replies if r["accepted"] for e in r["events"]]
            assert len(accepted) == 40
            assert [e["id"] for e in await stored_events(a, k)][1:] == accepted

    run(scenario())


def test_durable_no_acknowledgement_means_no_acceptance(tmp_path: Path, project: Project) -> None:
    """With the stream gone, JetStream cannot ack: the reply is 503, never accepted."""
    server = start_server(tmp_path / "nats")
    try:

        async def scenario() -> None:
            async with processes(server.url, project.aggregates["bankaccount"], 1) as (a,):
                k = key()
                await open_account(a, k)
                await a.store.js.delete_stream("BANK_EVENTS")
                reply = await a.process("deposit", body({"amount": 5}), headers(k))
                assert reply["accepted"] is False
                assert reply["code"] in (500, 503)
                assert "nothing was stored" in reply["message"]

        run(scenario())
    finally:
        server.stop()


# 2. Atomic ---------------------------------------------------------------------


def test_atomic_a_multi_event_command_is_one_batch(nats_server: EmbeddedServer, project: Project) -> None:
    async def scenario() -> None:
        async with processes(nats_server.url, project.aggregates["lab"], 1) as (a,):
            k = key()
            reply = await a.process("switch_on", body({"level": 3}), {"x-ergonats-entity-key": k})
            assert [e["type"] for e in reply["events"]] == ["switched_on", "level_set"]
            js = a.store.js
            first = await js.get_last_msg("LAB_EVENTS", f"lab.events.{k}.switched_on")
            second = await js.get_last_msg("LAB_EVENTS", f"lab.events.{k}.level_set")
            assert first.headers["Nats-Batch-Id"] == second.headers["Nats-Batch-Id"]
            assert (first.headers["Nats-Batch-Sequence"], second.headers["Nats-Batch-Sequence"]) == ("1", "2")
            assert second.headers["Nats-Batch-Commit"] == "1"

    run(scenario())


def test_atomic_a_conflicting_batch_stores_nothing(nats_server: EmbeddedServer, project: Project) -> None:
    async def scenario() -> None:
        async with processes(nats_server.url, project.aggregates["lab"], 1) as (a,):
            k = key()
            await a.process("switch_on", body({}), {"x-ergonats-entity-key": k})
            events = [Outgoing(a.store.subject(k, "level_set"), b'{"data": {}}', uuid.uuid4().hex) for _ in range(3)]
            with pytest.raises(ConflictError):
                await a.store.append(k, 0, events)  # the entity is at sequence > 0
            assert len(await stored_events(a, k)) == 1

    run(scenario())


# 3. No lost update ---------------------------------------------------------------


def test_no_lost_update_across_two_processes(nats_server: EmbeddedServer, project: Project) -> None:
    async def scenario() -> None:
        async with processes(nats_server.url, project.aggregates["bankaccount"]) as (a, b):
            k = key()
            await open_account(a, k, 100)
            await b.process("deposit", body({"amount": 1}), headers(k))  # b warm too
            amounts = list(range(1, 61))
            replies = await asyncio.gather(
                *[
                    (a if i % 2 else b).process("deposit", body({"amount": amount}), headers(k))
                    for i, amount in enumerate(amounts)
                ]
            )
            accepted = [amount for amount, r in zip(amounts, replies, strict=True) if r["accepted"]]
            assert all(r["accepted"] or r["code"] == 409 for r in replies)
            assert len(accepted) >= 50  # bounded retries may give up on a few, never silently
            events = await stored_events(a, k)
            assert [e["aggversion"] for e in events] == list(range(1, len(events) + 1))
            assert len(events) == 2 + len(accepted)
            final = project.aggregates["bankaccount"].replay(k, [event_from_json(json.dumps(e)) for e in events])
            assert final.data["balance"] == 101 + sum(accepted)

    run(scenario())


# 4. Read your writes ---------------------------------------------------------------


def test_read_your_writes_a_rejection_is_never_decided_on_stale_state(
    nats_server: EmbeddedServer, project: Project
) -> None:
    async def scenario() -> None:
        async with processes(nats_server.url, project.aggregates["bankaccount"]) as (a, b):
            k = key()
            await open_account(a, k, 150)  # a holds balance 150 in memory
            assert (await b.process("deposit", body({"amount": 100}), headers(k)))["accepted"]
            reply = await a.process("withdraw", body({"amount": 200}), headers(k))
            assert reply["accepted"], reply  # decided on 250, not on a's stale 150
            assert (await b.process("freeze", body({}), headers(k)))["accepted"]
            refused = await a.process("deposit", body({"amount": 1}), headers(k))
            assert refused["code"] == 409 and "'frozen'" in refused["message"]

    run(scenario())


def test_read_your_writes_expected_version_sees_the_other_process(
    nats_server: EmbeddedServer, project: Project
) -> None:
    async def scenario() -> None:
        async with processes(nats_server.url, project.aggregates["bankaccount"]) as (a, b):
            k = key()
            await open_account(a, k)
            assert (await b.process("deposit", body({"amount": 1}), headers(k)))["accepted"]
            reply = await a.process("deposit", body({"amount": 1}), headers(k, **{"x-esfsm-expected-version": "2"}))
            assert reply["accepted"] and reply["version"] == 3

    run(scenario())


# 5. Converges ------------------------------------------------------------------------


def test_converges_after_a_crash_between_append_and_state_write(nats_server: EmbeddedServer, project: Project) -> None:
    """Events appended with no snapshot written (a runtime that died right after the
    append) are seen by the next load and written to KV by the snapshot writer."""
    compiled = project.aggregates["bankaccount"]

    async def scenario() -> None:
        async with processes(nats_server.url, compiled, 1) as (a,):
            k = key()
            await open_account(a, k, 150)
            entity = a.cached(k)
            decision = compiled.decide(entity.state, _request("deposit", k, {"amount": 50}))
            outgoing = [Outgoing(a.store.subject(k, e.get_type()), _json(e), e.get_id()) for e in decision.events]
            await a.store.append(k, entity.seq, outgoing)  # ... and "crash" before anything else

            async with processes(nats_server.url, compiled, 1) as (fresh,):
                reply = await fresh.process("withdraw", body({"amount": 200}), headers(k))
                assert reply["accepted"] and reply["version"] == 3  # saw the orphan deposit
                projector = Projector(fresh.store)
                task = asyncio.create_task(projector.run())
                for _ in range(100):
                    snapshot, _ = await fresh.store.snapshot(k)
                    if snapshot is not None and snapshot.state.version == 3:
                        break
                    await asyncio.sleep(0.05)
                projector.stop()
                await task
                history = [event_from_json(raw) for raw in await fresh.store.history(k)]
                assert snapshot is not None and snapshot.state == compiled.replay(k, history)

    run(scenario())


def test_snapshot_leaves_out_old_replies_to_fit_and_refuses_a_state_that_cannot() -> None:
    entity = Entity(
        EntityState("k", "open", {"owner": "ann"}, 3),
        7,
        OrderedDict((f"c{i}", {"accepted": True, "pad": "x" * 100}) for i in range(3)),
    )
    whole = entity.to_json()
    assert entity.to_json(len(whole)) == whole  # fits: unchanged
    trimmed = json.loads(entity.to_json(len(whole) - 50))
    assert list(trimmed["commands"]) == ["c1", "c2"]  # the oldest left out first
    assert json.loads(entity.to_json(120))["commands"] == {}
    assert list(entity.commands) == ["c0", "c1", "c2"]  # the entity itself keeps them
    with pytest.raises(SnapshotTooLarge, match="over the 40 bytes"):
        entity.to_json(40)


def test_converges_when_snapshots_do_not_fit_in_a_message(
    tmp_path: Path, project: Project, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A snapshot over max_payload could never be written (the writer used to retry it every
    second, for ever): old replies are left out of it. A command whose state alone would not
    fit is refused (413) before anything is stored; one stored before that check (an older
    runtime, a smaller max_payload now) is reported and acknowledged, while the other
    entities' snapshots are written."""
    compiled = project.aggregates["bankaccount"]
    monkeypatch.setattr(AggregateStore, "snapshot_limit", property(lambda self: 600))
    server = start_server(tmp_path / "nats")

    async def scenario() -> None:
        async with processes(server.url, compiled, 1) as (a,):
            replies, huge, small = key(), key(), key()
            refused = await a.process("open_account", body({"owner": "h" * 800, "initial_balance": 150}), headers(huge))
            assert refused["code"] == 413 and "nothing was stored" in refused["message"], refused
            assert await a.store.history(huge) == []
            opened = new_event(
                "bankaccount", "account_opened", huge, 1, {"owner": "h" * 800, "balance": 150}, dt.datetime.now(dt.UTC)
            )  # as a runtime without the check stored it
            await a.store.append(
                huge, 0, [Outgoing(a.store.subject(huge, "account_opened"), event_to_json(opened), opened.get_id())]
            )
            for k, owner, extra in [(replies, "r" * 300, {"x-esfsm-command-id": "c1"}), (small, "ann", {})]:
                reply = await a.process(
                    "open_account", body({"owner": owner, "initial_balance": 150}), headers(k, **extra)
                )
                assert reply["accepted"], reply
            projector = Projector(a.store, a.cached)
            task = asyncio.create_task(projector.run())
            try:
                for _ in range(100):
                    info = await a.store.js.consumer_info(compiled.model.nats.stream, a.store.durable)
                    if info.num_pending == 0 and info.num_ack_pending == 0:
                        break
                    await asyncio.sleep(0.05)
                assert (info.num_pending, info.num_ack_pending) == (0, 0)  # acknowledged, not retried
            finally:
                projector.stop()
                await task
            with_replies, _ = await a.store.snapshot(replies)
            assert with_replies is not None and with_replies.state.version == 1 and not with_replies.commands
            assert a.cached(replies).commands  # the process still answers a retry from memory
            assert (await a.store.snapshot(huge))[0] is None
            assert (await a.store.snapshot(small))[0] is not None
        assert any(f"'{huge}' is" in r.getMessage() and "over the 600 bytes" in r.getMessage() for r in caplog.records)

    try:
        run(scenario())
    finally:
        server.stop()


def test_converges_after_the_runtime_is_killed_under_load(tmp_path: Path, project: Project) -> None:
    compiled = project.aggregates["bankaccount"]
    server = start_server(tmp_path / "nats")
    runtime = RuntimeProcess(server.url, log=tmp_path / "runtime.log").start()
    keys = [f"kill-{i}" for i in range(20)]
    try:

        async def load() -> dict[str, list[str]]:
            nc = await nats.connect(server.url)
            accepted: dict[str, list[str]] = {k: [] for k in keys}
            for k in keys:
                await nc.request(
                    "bank.cmds.open_account",
                    body({"owner": "a", "initial_balance": 100}),
                    timeout=10,
                    headers=headers(k),
                )

            async def deposit(k: str, i: int) -> None:
                try:
                    msg = await nc.request(
                        "bank.cmds.deposit",
                        body({"amount": 1}),
                        timeout=2,
                        headers=headers(k, **{"x-esfsm-command-id": f"{k}-{i}"}),
                    )
                except Exception:
                    return  # the runtime died: no reply, the outcome is unknown to this client
                reply = json.loads(msg.data)
                if reply["accepted"]:
                    accepted[k].extend(e["id"] for e in reply["events"])

            tasks = [asyncio.create_task(deposit(k, i)) for i in range(15) for k in keys]
            await asyncio.sleep(0.3)
            runtime.kill()  # SIGKILL in the middle of the load
            await asyncio.gather(*tasks)
            await nc.close()
            return accepted

        accepted = run(load())
        restarted = RuntimeProcess(server.url, log=tmp_path / "runtime2.log").start()

        async def check() -> None:
            async with processes(server.url, compiled, 1) as (a,):
                for k in keys:
                    events = await stored_events(a, k)
                    ids = [e["id"] for e in events]
                    assert len(ids) == len(set(ids))  # no duplicate event
                    assert set(accepted[k]) <= set(ids)  # no accepted command lost
                    assert [e["aggversion"] for e in events] == list(range(1, len(events) + 1))
                    history = [event_from_json(json.dumps(e)) for e in events]
                    for _ in range(200):
                        snapshot, _ = await a.store.snapshot(k)
                        if snapshot is not None and snapshot.seq == (await a.store.last_seq(k)):
                            break
                        await asyncio.sleep(0.05)
                    assert snapshot is not None and snapshot.state == compiled.replay(k, history)

        try:
            run(check())
        finally:
            assert restarted.terminate() == 0
    finally:
        runtime.kill()
        server.stop()


# 6. Idempotent -------------------------------------------------------------------------


def test_idempotent_a_retry_on_another_process_is_applied_once(nats_server: EmbeddedServer, project: Project) -> None:
    async def scenario() -> None:
        async with processes(nats_server.url, project.aggregates["bankaccount"]) as (a, b):
            k = key()
            await open_account(a, k)
            retry = headers(k, **{"x-esfsm-command-id": "pay-42"})
            first = await a.process("deposit", body({"amount": 10}), retry)
            again = await b.process("deposit", body({"amount": 10}), retry)  # b loads cold
            assert first == again and first["accepted"]
            once_more = await a.process("deposit", body({"amount": 10}), retry)
            assert once_more == first
            assert len(await stored_events(a, k)) == 2

    run(scenario())


def test_idempotent_the_command_id_survives_a_snapshot(nats_server: EmbeddedServer, project: Project) -> None:
    compiled = project.aggregates["bankaccount"]

    async def scenario() -> None:
        async with processes(nats_server.url, compiled) as (a, b):
            k = key()
            await open_account(a, k)
            retry = headers(k, **{"x-esfsm-command-id": "once"})
            first = await a.process("deposit", body({"amount": 3}), retry)
            entity = a.cached(k)
            assert entity is not None
            # 0 when a's snapshot writer got there first: either way the snapshot is now this recent
            await a.store.write_snapshot(k, entity.seq, entity)
            snapshot, _ = await b.store.snapshot(k)
            assert snapshot is not None and snapshot.seq == entity.seq and "once" in snapshot.commands
            assert await b.process("deposit", body({"amount": 3}), retry) == first
            assert len(await stored_events(a, k)) == 2

    run(scenario())


# 7. Deterministic -------------------------------------------------------------------------


def test_deterministic_rebuild_gives_identical_state(nats_server: EmbeddedServer, project: Project) -> None:
    compiled = project.aggregates["order"]

    async def scenario() -> None:
        async with processes(nats_server.url, compiled, 1) as (a,):
            k = key()
            steps = [
                ("create", {"customer": "c-1"}),
                ("add_item", {"sku": "A", "quantity": 2, "unit_price": 150}),
                ("add_item", {"sku": "B", "quantity": 1, "unit_price": 99}),
                ("add_item", {"sku": "A", "quantity": 1, "unit_price": 150}),
                ("remove_item", {"sku": "B"}),
                ("place", {}),
            ]
            for command, payload in steps:
                reply = await a.process(command, body(payload), headers(k))
                assert reply["accepted"], (command, reply)
            live = a.cached(k)
            assert live is not None
            await rebuild(a.store)
            rebuilt, _ = await a.store.snapshot(k)
            assert rebuilt is not None
            assert (rebuilt.state, rebuilt.seq) == (live.state, live.seq)
            again = await a.store.catch_up(Entity(compiled.initial_state(k)))
            assert again.state == live.state

    run(scenario())


def _request(command: str, k: str, payload: dict[str, Any]) -> Any:
    from esfsm.values import CommandRequest

    return CommandRequest(command, k, payload, ANN)


def _json(event: Any) -> bytes:
    from esfsm.events import event_to_json

    return event_to_json(event)
