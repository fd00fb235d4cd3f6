"""A 3-node JetStream cluster with two runtime processes: a node dies under load.

Three nats-server processes on loopback form a cluster; the aggregate of
tests/fixtures/cluster/ (the bank account with `replicas: 3`) has its stream,
KV bucket and durable consumer on all three. Two `esfsm run` processes, each
given the three URLs, share the queue group. A client drives one worker per
account (deposit, then withdraw of the whole balance the client knows, and
again), each command with its own `x-esfsm-command-id`; a command whose outcome
is unknown (no reply, or a 503) is retried with the same id until it has a
definite answer, so the client always knows the exact balance.

Mid-load the node that one runtime is connected to, and that leads the event
stream, is SIGKILLed; it comes back later with the same store. Checked:

* commands keep being accepted while the node is down (after the leader
  election; the runtime on that node reconnects to another one);
* every accepted command's events are stored exactly once, versions are
  contiguous, no command id is applied twice, a command answered "not
  accepted" stored nothing;
* read your writes: the withdraw of the whole known balance is never rejected
  (a rejection decided on a stale state would be a 422 "insufficient funds");
* the KV snapshot of every entity converges to the fold of its events, and the
  restarted node catches up with the others.

The test prints what it measured (`pytest -s`): how long no command was
accepted, how many attempts got a 503 or no reply; docs/scaling.md quotes it.
The other tests here pin down what the cluster test found: a rejection decided
on a replica that lags, a snapshot moved back by a redelivered event, and a
bucket left at one replica when `replicas` is raised.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

import nats

from helpers import bank_headers
from nats_support import Cluster, RuntimeProcess, run, start_cluster, unknown, wait_for_jetstream

from esfsm.events import event_from_json
from esfsm.project import load_project
from esfsm.runtime.store import AggregateStore

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "cluster"
AGGREGATE = "clusterbank"
COMMANDS = "cbank.cmds"
STREAM = "CBANK_EVENTS"
BUCKET_STREAM = "KV_AGG_clusterbank"
KEYS = [f"acct-{i}" for i in range(12)]
OPENING_BALANCE = 100
CLIENT_TIMEOUT = 4.0  # the runtime may take longer to answer while a leader is elected: then it is unknown
WARM_UP = 2.0  # seconds of load before the kill
MIN_DOWN = 4.0  # the node stays down at least this long ...
ACCEPTED_WHILE_DOWN = 50  # ... and until this many commands were accepted without it
AFTER_RESTART = 3.0  # seconds of load once it is back
T = TypeVar("T")


@dataclass
class Attempt:
    command_id: str
    sent: float
    answered: float
    reply: dict[str, Any] | None


@dataclass
class Load:
    """What the client saw: every attempt, the final outcome per command id, the balances."""

    attempts: list[Attempt] = field(default_factory=list)
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    balances: dict[str, int] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def accepted_between(self, start: float, end: float) -> list[Attempt]:
        return [a for a in self.attempts if a.reply and a.reply["accepted"] and start <= a.sent and a.answered <= end]


async def quiet(*_: object) -> None:
    """error_cb: the client's reconnects are expected here, not worth a logged traceback."""


async def send(
    nc: Any, command: str, key: str, body: dict[str, Any], command_id: str, timeout: float = CLIENT_TIMEOUT
) -> dict[str, Any] | None:
    try:
        msg = await nc.request(
            f"{COMMANDS}.{command}", json.dumps(body).encode(), timeout=timeout, headers=bank_headers(key, command_id)
        )
    except Exception:  # timeout, no responders while the queue group moves, disconnected
        return None
    return json.loads(msg.data)  # type: ignore[no-any-return]


async def worker(nc: Any, key: str, load: Load) -> None:
    """deposit 1, withdraw the whole balance, ...; each outcome made definite before the next."""
    n = 0
    while not load.stop.is_set():
        n += 1
        command_id = f"{key}/{n}"
        balance = load.balances[key]
        command, body = ("deposit", {"amount": 1}) if n % 2 else ("withdraw", {"amount": balance})
        for _ in range(120):
            sent = time.monotonic()
            reply = await send(nc, command, key, body, command_id)
            load.attempts.append(Attempt(command_id, sent, time.monotonic(), reply))
            if not unknown(reply):
                break
            await asyncio.sleep(0.2)  # then retry with the same command id
        else:
            raise AssertionError(f"{command_id}: no definite answer")
        assert reply is not None
        load.outcomes[command_id] = reply
        if reply["accepted"]:
            load.balances[key] = balance + 1 if command == "deposit" else 0


async def stream_leader(nc: Any, stream: str) -> str | None:
    info = await nc.jetstream(timeout=2).stream_info(stream)
    return info.cluster.leader if info.cluster else None


async def move_leader(nc: Any, stream: str, preferred: str) -> None:
    """Ask the stream's leader to step down in favour of preferred (best effort)."""
    for _ in range(20):
        if await stream_leader(nc, stream) == preferred:
            return
        try:
            await nc.request(
                f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}",
                json.dumps({"placement": {"preferred": preferred}}).encode(),
                timeout=2,
            )
        except Exception:
            pass
        await asyncio.sleep(0.5)


async def wait_all_current(nc: Any, streams: list[str], timeout: float = 30.0) -> None:
    """Until each stream has a leader and all its replicas are current with no lag."""
    deadline = time.monotonic() + timeout
    for stream in streams:
        seen: object = None
        while True:
            try:
                seen = cluster = (await nc.jetstream(timeout=2).stream_info(stream)).cluster
                if (
                    cluster
                    and cluster.leader
                    and len(cluster.replicas or []) == 2
                    and all(p.current and not p.offline and not p.lag for p in cluster.replicas or [])
                ):
                    break
            except Exception as err:  # no leader yet
                seen = err
            if time.monotonic() > deadline:
                raise AssertionError(f"{stream}: replicas did not catch up: {seen}")
            await asyncio.sleep(0.2)


async def patiently(read: Callable[[], Awaitable[T]], timeout: float = 20.0) -> T:
    """read(), retried while it fails (a JetStream API call can time out while the
    restarted node settles): the checks below judge what is stored, not availability."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await read()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def check_invariants(urls: list[str], load: Load) -> None:
    """Exactly once, contiguous, idempotent, RYW, KV converges — read through urls."""
    compiled = load_project([FIXTURE]).aggregates[AGGREGATE]
    nc = await nats.connect(urls, error_cb=quiet)
    store = AggregateStore(nc, compiled)
    try:
        store.kv = await patiently(lambda: nc.jetstream(timeout=5).key_value(compiled.model.nats.bucket))
        codes = Counter("ok" if r["accepted"] else r["code"] for r in load.outcomes.values())
        assert set(codes) <= {"ok"}, f"a definite rejection under load (422 = decided on a stale state): {codes}"
        for key in KEYS:
            raw = await patiently(partial(store.history, key))
            events = [json.loads(r) for r in raw]
            ids = [e["id"] for e in events]
            assert len(ids) == len(set(ids)), f"{key}: an event stored twice"
            versions = [e["aggversion"] for e in events]
            assert versions == list(range(1, len(events) + 1)), f"{key}: versions not contiguous"
            by_command = Counter(e.get("commandid") for e in events)
            assert all(n == 1 for n in by_command.values()), f"{key}: a command id applied twice: {by_command}"
            mine = {c: r for c, r in load.outcomes.items() if c.startswith(key + "/")}
            assert set(by_command) == {c for c, r in mine.items() if r["accepted"]}, f"{key}: stored ≠ accepted"
            for command_id, reply in mine.items():
                stored = [e["id"] for e in events if e.get("commandid") == command_id]
                assert stored == [e["id"] for e in reply["events"]], f"{command_id}: reply and stream differ"
            live = compiled.replay(key, [event_from_json(r) for r in raw])
            assert live.data["balance"] == load.balances[key], f"{key}: balance {live.data} ≠ client's"
            # The snapshot writer may need a redelivery (ack_wait 10 s) for events whose ack a fail-over lost.
            last = await patiently(partial(store.last_seq, key))
            deadline = time.monotonic() + 25
            while True:
                snapshot, _ = await patiently(partial(store.snapshot, key))
                if (snapshot is not None and snapshot.seq == last) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert snapshot is not None and snapshot.state == live, (
                f"{key}: KV did not converge: snapshot at seq {snapshot and snapshot.seq} "
                f"{snapshot and snapshot.state}, stream at {last} {live}"
            )
    finally:
        await nc.close()


def node_of(runtime: RuntimeProcess, cluster: Cluster) -> str:
    """The name of the node the runtime connected to first (from its `connected url=…` line)."""
    found = re.search(r"msg=connected url=(\S+)", runtime.log())
    assert found, runtime.log()
    port = int(found.group(1).rsplit(":", 1)[1])
    return next(f"n{i + 1}" for i, node in enumerate(cluster.nodes) if node.port == port)


def test_node_killed_under_load_on_a_3_node_cluster(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "cluster")
    runtimes: list[RuntimeProcess] = []
    load = Load()
    try:

        async def prepare() -> None:
            await wait_for_jetstream(cluster.urls)
            # The stream, bucket and consumer with 3 replicas, once the meta leader can place them.
            compiled = load_project([FIXTURE]).aggregates[AGGREGATE]
            nc = await nats.connect(cluster.urls, error_cb=quiet)
            try:
                for attempt in range(100):
                    try:
                        await AggregateStore(nc, compiled).ensure()
                        break
                    except Exception:
                        if attempt == 99:
                            raise
                        await asyncio.sleep(0.2)
                await wait_all_current(nc, [STREAM, BUCKET_STREAM])
            finally:
                await nc.close()

        run(prepare(), timeout=60)
        servers = [arg for url in cluster.urls[1:] for arg in ("--server", url)]
        for i in range(2):  # one at a time, so that the finally below stops each one that started
            runtimes.append(  # noqa: PERF401
                RuntimeProcess(
                    cluster.urls[0],
                    paths=[str(FIXTURE)],
                    log=tmp_path / f"runtime{i + 1}.log",
                    extra_args=servers,
                ).start()
            )
        victim_name = node_of(runtimes[0], cluster)
        victim = cluster.node(victim_name)

        async def scenario() -> dict[str, Any]:
            nc = await nats.connect(cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2, error_cb=quiet)
            try:
                await move_leader(nc, STREAM, victim_name)
                leader_before = await stream_leader(nc, STREAM)
                for key in KEYS:
                    reply = await send(
                        nc,
                        "open_account",
                        key,
                        {"owner": "ann", "initial_balance": OPENING_BALANCE},
                        f"{key}/0",
                        timeout=10,
                    )
                    assert reply is not None and reply["accepted"], reply
                    load.outcomes[f"{key}/0"] = reply
                    load.balances[key] = OPENING_BALANCE

                times: dict[str, float] = {}

                async def fault() -> None:
                    await asyncio.sleep(WARM_UP)
                    times["kill"] = time.monotonic()
                    await asyncio.to_thread(victim.kill)  # SIGKILL: no leadership hand-over
                    while (
                        time.monotonic() - times["kill"] < MIN_DOWN
                        or len(load.accepted_between(times["kill"], time.monotonic())) < ACCEPTED_WHILE_DOWN
                    ):
                        if time.monotonic() - times["kill"] > 45:
                            raise AssertionError(
                                f"no fail-over: {len(load.accepted_between(times['kill'], 1e12))} "
                                f"commands accepted in the 45 s after {victim_name} was killed"
                            )
                        await asyncio.sleep(0.1)
                    times["restart"] = time.monotonic()
                    victim.start()  # the same ports, the same store (on this thread: it outlives the node)
                    await asyncio.sleep(AFTER_RESTART)
                    load.stop.set()

                await asyncio.gather(fault(), *[worker(nc, key, load) for key in KEYS])
                kill, restart = times["kill"], times["restart"]
                leader_after = await stream_leader(nc, STREAM)

                # Measured: how long no command was accepted, what the client saw.
                accepted = sorted(a.answered for a in load.attempts if a.reply and a.reply["accepted"])
                first_after_kill = min(a.answered for a in load.accepted_between(kill, restart))
                gaps = [b - a for a, b in pairwise(accepted) if kill - 1 <= a <= restart]
                attempts = Counter(
                    "ok" if a.reply and a.reply["accepted"] else "timeout" if a.reply is None else a.reply["code"]
                    for a in load.attempts
                )
                retried = Counter(a.command_id for a in load.attempts)
                stats = {
                    "victim": victim_name,
                    "stream_leader_before": leader_before,
                    "stream_leader_after": leader_after,
                    "commands": len(load.outcomes) - len(KEYS),
                    "attempts": dict(attempts),
                    "commands_retried": sum(1 for n in retried.values() if n > 1),
                    "accepted_while_down": len(load.accepted_between(kill, restart)),
                    "down_s": round(restart - kill, 2),
                    "first_accept_after_kill_s": round(first_after_kill - kill, 2),
                    "longest_gap_between_accepts_s": round(max(gaps), 2),
                }
                print(f"\ncluster fault: {json.dumps(stats)}")

                # The runtime fails over: accepted while the node was down.
                assert stats["accepted_while_down"] >= ACCEPTED_WHILE_DOWN, stats
                assert attempts["ok"] > 0 and set(attempts) <= {"ok", "timeout", 503}, stats
                # After everything, a fresh command through any node is accepted.
                after = await send(nc, "deposit", KEYS[0], {"amount": 1}, f"{KEYS[0]}/after", timeout=10)
                assert after is not None and after["accepted"], after
                load.outcomes[f"{KEYS[0]}/after"] = after
                load.balances[KEYS[0]] += 1
                await wait_all_current(nc, [STREAM, BUCKET_STREAM])
            finally:
                await nc.close()
            # Read through the restarted node alone: it has caught up.
            await check_invariants([victim.url], load)
            return stats

        run(scenario(), timeout=150)
        assert "reconnected to NATS" in runtimes[0].log(), runtimes[0].log()
    finally:
        codes = [r.terminate() for r in runtimes]
        cluster.stop()
    assert codes == [0, 0], [r.log() for r in runtimes]


def test_read_your_writes_across_processes_on_a_replicated_stream(tmp_path: Path) -> None:
    """Process A deposits, then process B withdraws the whole balance. B's warm entity misses
    A's deposit, so B decides "insufficient funds" and must check the entity's last sequence
    before answering. Any replica answers a direct get, and one that has not applied A's
    append yet would confirm the stale state (a few in a thousand, measured): the check
    asks the stream leader. Both processes talk to followers, as a runtime usually does."""
    from esfsm.runtime.service import AggregateService

    cluster = start_cluster(tmp_path / "cluster")
    try:

        async def scenario() -> None:
            await wait_for_jetstream(cluster.urls)
            compiled = load_project([FIXTURE]).aggregates[AGGREGATE]
            boot = await nats.connect(cluster.urls, error_cb=quiet)
            for attempt in range(100):
                try:
                    await AggregateStore(boot, compiled).ensure()
                    break
                except Exception:
                    if attempt == 99:
                        raise
                    await asyncio.sleep(0.2)
            await wait_all_current(boot, [STREAM])
            leader = await stream_leader(boot, STREAM)
            await boot.close()
            services = []
            for i, url in enumerate(cluster.urls):
                if f"n{i + 1}" != leader:
                    nc = await nats.connect(url, error_cb=quiet)
                    store = AggregateStore(nc, compiled)
                    await store.ensure()
                    services.append(AggregateService(nc, compiled, store))
            a, b = services
            stale: list[dict[str, Any]] = []

            async def account(key: str) -> None:
                h = bank_headers(key)
                assert (await a.process("open_account", b'{"owner": "ann", "initial_balance": 100}', h))["accepted"]
                balance = 100
                for _ in range(300):
                    assert (await a.process("deposit", b'{"amount": 1}', h))["accepted"]
                    reply = await b.process("withdraw", json.dumps({"amount": balance + 1}).encode(), h)
                    if not reply["accepted"]:
                        stale.append(reply)
                        b.forget(key)
                    balance = 0 if reply["accepted"] else balance + 1

            try:
                await asyncio.gather(*[account(f"ryw-{i}") for i in range(8)])
            finally:
                for service in services:
                    await service.nc.close()
            assert not stale, f"{len(stale)} of 2400 withdraws rejected on a stale state: {stale[0]}"

        run(scenario(), timeout=120)
    finally:
        cluster.stop()


def test_a_redelivered_event_never_moves_the_snapshot_back(tmp_path: Path) -> None:
    """Found by the cluster test: process A wrote the snapshot at S1 from its warm entity,
    B appended at S2 (A's warm entity stays at S1), A's snapshot writer brought the
    snapshot to S2 by reading the stream; then the event at S1 is redelivered to A (its
    ack was lost in the fail-over). Writing the warm entity at S1 with the revision A wrote
    last would put the snapshot back to S1, and nothing would repair it until the next
    event of that entity."""
    import copy

    from nats_support import start_server

    from esfsm.runtime.service import AggregateService

    compiled = load_project([Path(__file__).resolve().parent.parent / "definitions"]).aggregates["bankaccount"]
    server = start_server(tmp_path / "nats")
    try:

        async def scenario() -> None:
            nc = await nats.connect(server.url)
            store = AggregateStore(nc, compiled)
            await store.ensure()
            service = AggregateService(nc, compiled, store)
            h = bank_headers("k")
            assert (await service.process("open_account", b'{"owner": "a", "initial_balance": 100}', h))["accepted"]
            assert (await service.process("deposit", b'{"amount": 1}', h))["accepted"]
            warm = copy.deepcopy(service.cached("k"))  # A's warm entity, at S1
            assert warm is not None
            s1 = warm.seq
            revision = await store.write_snapshot("k", s1, warm)
            assert (await service.process("deposit", b'{"amount": 1}', h))["accepted"]  # B appends at S2
            s2 = await store.last_seq("k")
            revision = await store.write_snapshot("k", s2, warm, revision_hint=revision) or revision
            await store.write_snapshot("k", s1, warm, revision_hint=revision)  # S1 redelivered to A
            snapshot, _ = await store.snapshot("k")
            assert snapshot is not None and (snapshot.seq, snapshot.state.version) == (s2, 3)
            await nc.close()

        run(scenario(), timeout=30)
    finally:
        server.stop()


def test_raising_replicas_scales_the_stream_the_bucket_and_the_consumer(tmp_path: Path) -> None:
    """A deployment moved to a cluster: its definitions go from `replicas: 1` to 3 and
    the runtime starts again. The stream and its consumer followed; the KV bucket must too,
    else losing the one node that holds it stops the snapshots and the cold loads."""
    import dataclasses

    cluster = start_cluster(tmp_path / "cluster")
    try:

        async def scenario() -> None:
            await wait_for_jetstream(cluster.urls)
            compiled = load_project([FIXTURE]).aggregates[AGGREGATE]
            nc = await nats.connect(cluster.urls, error_cb=quiet)
            js = nc.jetstream(timeout=5)
            try:
                before = AggregateStore(nc, compiled)
                before.names = dataclasses.replace(before.names, replicas=1)
                await patiently(before.ensure)
                bucket_before = (await js.stream_info(BUCKET_STREAM)).config
                assert bucket_before.num_replicas == 1
                await patiently(AggregateStore(nc, compiled).ensure)  # the definition says 3
                for stream in (STREAM, BUCKET_STREAM):
                    assert (await js.stream_info(stream)).config.num_replicas == 3, stream
                await wait_all_current(nc, [STREAM, BUCKET_STREAM])
                for _ in range(100):  # the consumer follows the stream's replicas, a moment later
                    consumer = (await js.consumer_info(STREAM, f"AGG_{AGGREGATE}")).cluster
                    if consumer is not None and len(consumer.replicas or []) == 2:
                        break
                    await asyncio.sleep(0.1)
                assert consumer is not None and len(consumer.replicas or []) == 2, consumer
                bucket_after = (await js.stream_info(BUCKET_STREAM)).config
                assert dataclasses.replace(bucket_after, num_replicas=1) == bucket_before  # nothing else changed
            finally:
                await nc.close()

        run(scenario(), timeout=60)
    finally:
        cluster.stop()
