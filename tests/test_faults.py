"""Faults while commands flow: the invariants must survive them.

Each test starts its own nats-server (the faults would disturb the shared one).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import pytest

from helpers import bank_headers
from nats_support import RuntimeProcess, ephemeral_port, run, start_server, unknown

from esfsm.events import event_from_json
from esfsm.project import Project
from esfsm.runtime.store import AggregateStore

KEYS = [f"fault-{i}" for i in range(12)]


async def send(nc: Any, key: str, command_id: str, timeout: float = 3.0) -> dict[str, Any] | None:
    """The reply, or None when no reply came (timeout, disconnected)."""
    try:
        msg = await nc.request(
            "bank.cmds.deposit", b'{"amount": 1}', timeout=timeout, headers=bank_headers(key, command_id)
        )
    except Exception:
        return None
    return json.loads(msg.data)  # type: ignore[no-any-return]


async def check_convergence(url: str, project: Project, outcomes: dict[str, dict[str, Any] | None]) -> None:
    compiled = project.aggregates["bankaccount"]
    nc = await nats.connect(url)
    store = AggregateStore(nc, compiled)
    await store.ensure()
    try:
        for key in KEYS:
            raw = await store.history(key)
            events = [json.loads(r) for r in raw]
            ids = [e["id"] for e in events]
            assert len(ids) == len(set(ids)), f"{key}: duplicate event"
            assert [e["aggversion"] for e in events] == list(range(1, len(events) + 1)), f"{key}: gap"
            by_command = Counter(e.get("commandid") for e in events[1:])
            assert all(n == 1 for n in by_command.values()), f"{key}: a command applied twice {by_command}"
            for command_id, reply in outcomes.items():
                if not command_id.startswith(key + "/"):
                    continue
                if reply and reply["accepted"]:
                    assert reply["events"][0]["id"] in ids, f"{command_id} accepted but not stored"
                else:
                    assert command_id not in by_command, f"{command_id} stored but answered {reply}"
            live = compiled.replay(key, [event_from_json(r) for r in raw])
            assert live.data["balance"] == 100 + len(by_command)
            for _ in range(200):
                snapshot, _ = await store.snapshot(key)
                if snapshot is not None and snapshot.seq == await store.last_seq(key):
                    break
                await asyncio.sleep(0.05)
            assert snapshot is not None and snapshot.state == live, f"{key}: KV did not converge"
    finally:
        await nc.close()


async def resolve(nc: Any, outcomes: dict[str, dict[str, Any] | None]) -> None:
    """Retry every command whose outcome is unknown (no reply, or a 503) with its command id
    until it has a definite answer: the runtime answers a stored one as the first time."""

    async def settle(command_id: str) -> None:
        for _ in range(40):
            reply = await send(nc, command_id.split("/", maxsplit=1)[0], command_id)
            if not unknown(reply):
                outcomes[command_id] = reply
                return
            await asyncio.sleep(0.25)
        raise AssertionError(f"{command_id}: no definite answer")

    await asyncio.gather(*[settle(c) for c, reply in list(outcomes.items()) if unknown(reply)])


@pytest.mark.parametrize("workers", ["1", "2"])
def test_server_restart_under_load(tmp_path: Path, project: Project, workers: str) -> None:
    """With two workers, commands passed between them and events handed between their snapshot
    writers cross the outage too."""
    port = ephemeral_port()
    server = start_server(tmp_path / "nats", port=port)
    runtime = RuntimeProcess(server.url, log=tmp_path / "runtime.log", extra_args=["--workers", workers]).start()
    outcomes: dict[str, dict[str, Any] | None] = {}
    try:

        async def scenario() -> None:
            nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
            for key in KEYS:
                msg = await nc.request(
                    "bank.cmds.open_account",
                    b'{"owner": "a", "initial_balance": 100}',
                    timeout=10,
                    headers={"x-ergonats-entity-key": key, "x-username": "ann"},
                )
                assert json.loads(msg.data)["accepted"]

            async def worker(key: str) -> None:
                n = 0
                deadline = time.monotonic() + 4.0
                while time.monotonic() < deadline:
                    n += 1
                    command_id = f"{key}/{n}"
                    outcomes[command_id] = await send(nc, key, command_id)
                    if unknown(outcomes[command_id]):
                        await asyncio.sleep(0.3)

            async def fault() -> None:
                await asyncio.sleep(1.0)
                await asyncio.to_thread(server.stop)  # the server goes away mid-load ...
                await asyncio.sleep(1.0)
                server.start()  # ... and comes back with the same store (on this thread: it outlives the server)

            await asyncio.gather(fault(), *[worker(k) for k in KEYS])
            codes = Counter("none" if r is None else "ok" if r["accepted"] else r["code"] for r in outcomes.values())
            assert codes["ok"] > 0 and (codes[503] + codes["none"]) > 0, codes  # the fault really hit the load
            assert set(codes) <= {"ok", 503, "none"}, codes
            await resolve(nc, outcomes)
            # Service resumed without restarting the runtime:
            after = await send(nc, KEYS[0], f"{KEYS[0]}/after", timeout=10)
            assert after is not None and after["accepted"], after
            outcomes[f"{KEYS[0]}/after"] = after
            await nc.close()
            await check_convergence(server.url, project, outcomes)

        run(scenario())
        assert "reconnected to NATS" in runtime.log()
    finally:
        code = runtime.terminate()
        server.stop()
    assert code == 0, runtime.log()


def test_runtime_killed_under_load_and_restarted(tmp_path: Path, project: Project) -> None:
    server = start_server(tmp_path / "nats")
    runtime = RuntimeProcess(server.url, log=tmp_path / "runtime.log").start()
    outcomes: dict[str, dict[str, Any] | None] = {}
    try:

        async def scenario() -> None:
            nc = await nats.connect(server.url)
            for key in KEYS:
                msg = await nc.request(
                    "bank.cmds.open_account",
                    b'{"owner": "a", "initial_balance": 100}',
                    timeout=10,
                    headers={"x-ergonats-entity-key": key, "x-username": "ann"},
                )
                assert json.loads(msg.data)["accepted"]

            async def worker(key: str) -> None:
                deadline = time.monotonic() + 2.0
                n = 0
                while time.monotonic() < deadline:
                    n += 1
                    command_id = f"{key}/{n}"
                    outcomes[command_id] = await send(nc, key, command_id, timeout=1.0)
                    if outcomes[command_id] is None:
                        return  # the runtime is gone: this client stops, its last outcome unknown

            killer = asyncio.get_running_loop().call_later(0.5, runtime.kill)  # SIGKILL mid-load
            await asyncio.gather(*[worker(k) for k in KEYS])
            killer.cancel()
            assert any(r is None for r in outcomes.values())  # some commands were cut off
            restarted = RuntimeProcess(server.url, log=tmp_path / "runtime2.log").start()
            try:
                await resolve(nc, outcomes)
                await nc.close()
                await check_convergence(server.url, project, outcomes)
            finally:
                assert restarted.terminate() == 0

        run(scenario())
    finally:
        runtime.kill()
        server.stop()


def test_a_publish_while_disconnected_fails_fast_and_is_never_sent_later(tmp_path: Path, project: Project) -> None:
    """nats-py would buffer it and send it after the reconnect, after its command was
    answered 503; the runtime connects with buffering off, so 503 means not stored."""
    from esfsm.runtime.connection import ConnectOptions, connect
    from esfsm.runtime.service import AggregateService

    compiled = project.aggregates["bankaccount"]
    port = ephemeral_port()
    server = start_server(tmp_path / "nats", port=port)
    try:

        async def scenario() -> None:
            nc = await connect([server.url], ConnectOptions(), reconnect_time_wait=0.2)
            store = AggregateStore(nc, compiled)
            await store.ensure()
            service = AggregateService(nc, compiled, store)
            opened = await service.process(
                "open_account",
                b'{"owner": "a", "initial_balance": 100}',
                {"x-ergonats-entity-key": "k", "x-username": "a"},
            )
            assert opened["accepted"]
            await asyncio.to_thread(server.stop)
            for _ in range(100):
                if not nc.is_connected:
                    break
                await asyncio.sleep(0.02)
            reply = await service.process("deposit", b'{"amount": 5}', bank_headers("k", "while-down"))
            assert (reply["accepted"], reply["code"]) == (False, 503)
            assert "nothing was stored" in reply["message"]
            server.start()  # on this thread: one of the pool's would take the server with it
            for _ in range(200):
                if nc.is_connected:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            history = [json.loads(r) for r in await store.history("k")]
            assert [e["type"] for e in history] == ["account_opened"]
            later = await service.process("deposit", b'{"amount": 5}', bank_headers("k", "after"))
            assert later["accepted"] and later["version"] == 2
            await nc.close()

        run(scenario())
    finally:
        server.stop()


def test_a_process_that_never_saw_an_entity_loads_it_from_the_stream(tmp_path: Path, project: Project) -> None:
    """Events another process appended (with no snapshot yet) are folded in on the first load."""
    from esfsm.events import event_to_json, new_event
    from esfsm.runtime.jetstream import Outgoing

    compiled = project.aggregates["bankaccount"]
    server = start_server(tmp_path / "nats")
    try:

        async def scenario() -> None:
            nc = await nats.connect(server.url)
            store = AggregateStore(nc, compiled)
            await store.ensure()
            assert (await store.load("k")).state == compiled.initial_state("k")
            opened = new_event(
                "bankaccount", "account_opened", "k", 1, {"owner": "a", "balance": 120}, dt.datetime.now(dt.UTC)
            )
            await store.append(
                "k", 0, [Outgoing(store.subject("k", "account_opened"), event_to_json(opened), opened.get_id())]
            )
            loaded = await store.load("k")
            assert (loaded.state.state, loaded.state.version, loaded.state.data["balance"]) == ("open", 1, 120)
            await nc.close()

        run(scenario())
    finally:
        server.stop()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_runtime_stopped_while_its_server_is_gone_exits_cleanly(tmp_path: Path, workers: str) -> None:
    """SIGTERM while reconnecting: nothing can be drained; it closes and exits 0, with no internal error."""
    server = start_server(tmp_path / "nats")
    runtime = RuntimeProcess(server.url, log=tmp_path / "runtime.log", extra_args=["--workers", workers]).start()
    try:
        server.kill()
        deadline = time.monotonic() + 10
        while runtime.log().count("disconnected from NATS") < int(workers):
            assert time.monotonic() < deadline, runtime.log()
            time.sleep(0.05)
        assert runtime.terminate() == 0, runtime.log()
        assert "internal error" not in runtime.log() and "Traceback" not in runtime.log()
    finally:
        runtime.kill()
        server.stop()
