"""The runtime's fast path (pipeline.py, Pipeline.fast): commands on a warm entity are decided
and appended straight from the read loop and answered from the ack's callback. These
tests send real requests through NATS to services started in this process, so every
command can take it, and check what it must keep: per-entity order, no lost update when
two processes race, idempotent retries, and the fallbacks."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats
import pytest

from nats_support import run, start_server

from esfsm.compiler import CompiledAggregate
from esfsm.project import Project
from esfsm.runtime.service import AggregateService
from esfsm.runtime.store import AggregateStore

KEY = "x-ergonats-entity-key"


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A server of this module's own: the session's shared one has a runtime process in the
    same queue groups, and order is only kept per process."""
    server = start_server(tmp_path_factory.mktemp("fast-path"))
    yield server
    server.stop()


@asynccontextmanager
async def serving(url: str, compiled: CompiledAggregate, count: int = 1) -> AsyncIterator[list[AggregateService]]:
    connections = [await nats.connect(url) for _ in range(count)]
    services = []
    try:
        for nc in connections:
            store = AggregateStore(nc, compiled)
            await store.ensure()
            service = AggregateService(nc, compiled, store)
            await service.start()
            services.append(service)
        for nc in connections:
            await nc.flush()
        yield services
    finally:
        for service in services:
            await service.stop()
        for nc in connections:
            await nc.close()


async def send(nc: Any, command: str, key: str, payload: dict[str, Any], **headers: str) -> dict[str, Any]:
    msg = await nc.request(
        f"bank.cmds.{command}",
        json.dumps(payload).encode(),
        timeout=10,
        headers={KEY: key, "x-username": "ann", **headers},
    )
    return json.loads(msg.data)


async def events_of(service: AggregateService, key: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in await service.store.history(key)]


def test_one_entity_keeps_arrival_order_on_the_fast_path(own_server: Any, project: Project) -> None:
    async def scenario() -> None:
        async with serving(own_server.url, project.aggregates["bankaccount"]) as [service]:
            client = await nats.connect(own_server.url)
            key = f"fast-{uuid.uuid4().hex[:8]}"
            assert (await send(client, "open_account", key, {"owner": "ann", "initial_balance": 100}))["accepted"]
            amounts = list(range(1, 201))
            # one connection, published in this order: the service receives them in this order
            replies = await asyncio.gather(*[send(client, "deposit", key, {"amount": a}) for a in amounts])
            assert all(r["accepted"] for r in replies)
            events = await events_of(service, key)
            assert [e["data"]["amount"] for e in events[1:]] == amounts  # applied in arrival order
            assert [e["aggversion"] for e in events] == list(range(1, 202))
            assert sorted(r["version"] for r in replies) == list(range(2, 202))
            # all at once, they queue behind the first for the entity's turn; one at a time,
            # each takes the fast path
            before = service.fast_served
            for _ in range(20):
                assert (await send(client, "deposit", key, {"amount": 1}))["accepted"]
            assert service.fast_served == before + 20
            assert len(await events_of(service, key)) == 221
            await client.close()

    run(scenario())


def test_two_processes_racing_on_one_entity_lose_no_update(own_server: Any, project: Project) -> None:
    async def scenario() -> None:
        compiled = project.aggregates["bankaccount"]
        async with serving(own_server.url, compiled, count=2) as (a, b):
            client = await nats.connect(own_server.url)
            key = f"race-{uuid.uuid4().hex[:8]}"
            assert (await send(client, "open_account", key, {"owner": "ann", "initial_balance": 100}))["accepted"]
            for _ in range(6):  # both processes warm
                assert (await send(client, "deposit", key, {"amount": 1}))["accepted"]
            stale_retries = 0
            for service in (a, b):
                held = service.pipeline.held

                def counting(*args: Any, _held: Any = held, **kwargs: Any) -> Any:
                    nonlocal stale_retries
                    stale_retries += bool(kwargs.get("stale"))
                    return _held(*args, **kwargs)

                service.pipeline.held = counting  # type: ignore[method-assign]
            amounts = list(range(10, 130))
            replies = await asyncio.gather(*[send(client, "deposit", key, {"amount": x}) for x in amounts])
            accepted = [x for x, r in zip(amounts, replies, strict=True) if r["accepted"]]
            assert all(r["accepted"] or r["code"] == 409 for r in replies)
            assert len(accepted) >= 100
            events = await events_of(a, key)
            assert [e["aggversion"] for e in events] == list(range(1, len(events) + 1))
            assert len(events) == 7 + len(accepted)
            assert sorted(e["data"]["amount"] for e in events[7:]) == sorted(accepted)  # none twice, none lost
            assert a.fast_served + b.fast_served > 0
            assert stale_retries > 0  # fast appends met the other process's events and were decided again
            await client.close()

    run(scenario())


def test_a_retry_with_the_same_command_id_is_answered_from_memory(own_server: Any, project: Project) -> None:
    async def scenario() -> None:
        async with serving(own_server.url, project.aggregates["bankaccount"]) as [service]:
            client = await nats.connect(own_server.url)
            key = f"idem-{uuid.uuid4().hex[:8]}"
            assert (await send(client, "open_account", key, {"owner": "ann", "initial_balance": 100}))["accepted"]
            first = await send(client, "deposit", key, {"amount": 7}, **{"x-esfsm-command-id": "c-1"})
            again = await send(client, "deposit", key, {"amount": 7}, **{"x-esfsm-command-id": "c-1"})
            assert first["accepted"] and again == first
            rejected = await send(client, "withdraw", key, {"amount": 10**6}, **{"x-esfsm-command-id": "c-2"})
            assert not rejected["accepted"] and rejected["code"] == 422
            assert await send(client, "withdraw", key, {"amount": 10**6}, **{"x-esfsm-command-id": "c-2"}) == rejected
            assert [e["type"] for e in await events_of(service, key)] == ["account_opened", "funds_deposited"]
            await client.close()

    run(scenario())


def test_requests_the_fast_path_cannot_take_are_answered_all_the_same(own_server: Any, project: Project) -> None:
    """Bad input before the entity matters, an expected version, a command that emits
    nothing, rejections (checked for freshness first) and a command emitting two events
    (an atomic batch) all get their proper answer on a warm entity."""

    async def scenario() -> None:
        async with serving(own_server.url, project.aggregates["lab"]) as [service]:
            client = await nats.connect(own_server.url)
            subjects = service.compiled.model.nats
            key = f"mix-{uuid.uuid4().hex[:8]}"

            async def lab(command: str, payload: Any, **headers: str) -> dict[str, Any]:
                raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                msg = await client.request(
                    f"{subjects.commands}.{command}", raw, timeout=10, headers={KEY: key, **headers}
                )
                return json.loads(msg.data)

            assert (await lab("switch_on", {}))["accepted"]
            assert (await lab("set_level", {"level": 2}))["accepted"]  # warm now
            fast_before = service.fast_served
            assert (await lab("set_level", {"level": 3}))["version"] == 3
            assert service.fast_served == fast_before + 1
            assert (await lab("nope", {}))["code"] == 404
            assert (await lab("set_level", b"{not json"))["code"] == 400
            assert (await lab("set_level", {"level": 11}))["code"] == 422  # the data schema: maximum 10
            stale = await lab("set_level", {"level": 4}, **{"x-esfsm-expected-version": "1"})
            assert stale["code"] == 409 and "expected version" in stale["message"]
            nothing = await lab("touch", {})  # accepted, emits nothing: answered after a freshness check
            assert nothing["accepted"] and nothing["events"] == [] and nothing["version"] == 3
            both = await lab("finish", {})
            assert both["accepted"] and [e["type"] for e in both["events"]] == ["level_set", "finished"]
            assert (await lab("set_level", {"level": 1}))["code"] == 409  # done
            stored = [json.loads(raw)["type"] for raw in await service.store.history(key)]
            assert stored == ["switched_on", "level_set", "level_set", "level_set", "finished"]
            await client.close()

    run(scenario())


def test_an_append_left_unanswered_is_resolved_like_on_the_ordinary_path(own_server: Any, project: Project) -> None:
    """No ack (here: the append went to a silent subscriber): the command may or may not be
    stored, so the append is retried with the same message id and check; it is stored once."""
    from esfsm.runtime.jetstream import requester

    async def scenario() -> None:
        async with serving(own_server.url, project.aggregates["bankaccount"]) as [service]:
            client = await nats.connect(own_server.url)
            key = f"lost-{uuid.uuid4().hex[:8]}"
            assert (await send(client, "open_account", key, {"owner": "ann", "initial_balance": 100}))["accepted"]
            # a first append of a type and version is noted in the catalog on the task path: note it now
            await service.store.catalog.note([("funds_deposited", 1)], "open")
            silent = await client.subscribe("silent.append")
            await client.flush()
            real = service.store.append_one

            def into_the_void(k: str, expected_seq: int, event: Any, then: Any) -> None:
                service.store.append_one = real  # once
                requester(service.nc).send_then("silent.append", event.body, 0.3, b"", then)

            resumed = []
            resume = service.pipeline._resume

            def counting(*args: Any) -> Any:
                resumed.append(args)
                return resume(*args)

            service.store.append_one = into_the_void  # type: ignore[method-assign]
            service.pipeline._resume = counting  # type: ignore[method-assign]
            reply = await send(client, "deposit", key, {"amount": 5})
            assert reply["accepted"] and reply["version"] == 2
            assert len(resumed) == 1  # the fast path waited for the ack, then resolved it
            assert [e["type"] for e in await events_of(service, key)] == ["account_opened", "funds_deposited"]
            assert (await send(client, "deposit", key, {"amount": 1}))["version"] == 3
            await silent.unsubscribe()
            await client.close()

    run(scenario())


def test_at_debug_level_every_command_logs_one_line(
    own_server: Any, project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    """`esfsm run --log-level debug`: one line per command, from either path, with its outcome."""

    async def scenario() -> None:
        async with serving(own_server.url, project.aggregates["bankaccount"]) as [service]:
            client = await nats.connect(own_server.url)
            key = f"log-{uuid.uuid4().hex[:8]}"
            await send(client, "open_account", key, {"owner": "ann", "initial_balance": 100})  # ordinary path
            await service.store.catalog.note([("funds_deposited", 1)], "open")  # else its first is the task path's
            await send(client, "deposit", key, {"amount": 5})  # fast path
            await send(client, "withdraw", key, {"amount": 10**6})  # rejected
            await client.close()
            assert service.fast_served >= 1

    with caplog.at_level("DEBUG", logger="esfsm.service"):
        run(scenario())
    lines = [r for r in caplog.records if r.name == "esfsm.service" and r.getMessage() == "command"]
    fields = [r.fields for r in lines]  # type: ignore[attr-defined]
    assert [(f["command"], f["accepted"]) for f in fields] == [
        ("open_account", True),
        ("deposit", True),
        ("withdraw", False),
    ]
    assert fields[1]["version"] == 2 and fields[1]["events"] == "funds_deposited" and fields[1]["state"] == "open"
    assert fields[2]["code"] == 422 and fields[2]["reason"] == "insufficient funds"
    assert all(f["key"].startswith("log-") and f["aggregate"] == "bankaccount" for f in fields)
