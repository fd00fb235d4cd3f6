"""`esfsm run --workers N`: entity keys shared out among worker processes (partition.py).

The in-process test runs two workers' Runtimes on separate connections, so it
can see which one answered what; the process tests run the real command.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import nats
import pytest
from click.testing import CliRunner
from nats.js.errors import KeyNotFoundError

from nats_support import RUNTIME_PATHS, run, start_server

from esfsm.cli import main
from esfsm.compiler import CompiledAggregate
from esfsm.project import Project
from esfsm.runtime.connection import ConnectOptions, connect
from esfsm.runtime.partition import Partition
from esfsm.runtime.runner import Runtime
from esfsm.runtime.server import die_with_parent, stop_process

ANN = {"x-username": "ann"}


def test_partition_parses_its_spec_and_owns_every_key_once() -> None:
    partition = Partition.parse("g1:1/3")
    assert (partition.group, partition.index, partition.count, str(partition)) == ("g1", 1, 3, "g1:1/3")
    keys = [f"acc-{i}" for i in range(300)]
    owners = [partition.owner(k) for k in keys]
    assert set(owners) == {0, 1, 2}  # every worker gets some
    assert owners == [Partition("other", 0, 3).owner(k) for k in keys]  # stable: the hash of the key alone
    for bad in ("g:3/3", "g:1", "no spaces:0/2", "g:-1/2", "", "g:0/1"):
        with pytest.raises(ValueError, match=f"^{re.escape(repr(bad))}"):
            Partition.parse(bad)


@asynccontextmanager
async def two_workers(url: str, compiled: CompiledAggregate) -> AsyncIterator[tuple[list[Runtime], Any]]:
    """Two workers' Runtimes of one group on connections of their own, serving; and a client."""
    group = uuid.uuid4().hex[:8]
    connections = [await connect([url], ConnectOptions()) for _ in range(2)]
    runtimes = [Runtime(nc, [compiled], partition=Partition(group, i, 2)) for i, nc in enumerate(connections)]
    client = await nats.connect(url)
    try:
        for runtime in runtimes:
            await runtime.prepare()
        assert all(await asyncio.gather(*(runtime.open() for runtime in runtimes)))
        yield runtimes, client
    finally:
        for runtime in runtimes:
            await runtime.stop()
        for nc in [*connections, client]:
            await nc.close()


def test_two_workers_each_answer_for_their_own_keys(tmp_path: Path, project: Project) -> None:
    """Every command is answered by the worker owning its key, whichever one NATS handed it
    to; each keeps only its own entities warm; the snapshots of all keys converge, those
    written from events the other worker's snapshot writer was handed included."""
    server = start_server(tmp_path / "nats")

    async def scenario() -> None:
        async with two_workers(server.url, project.aggregates["bankaccount"]) as (runtimes, client):
            keys = [f"w-{i}-{uuid.uuid4().hex[:6]}" for i in range(60)]

            async def send(command: str, k: str, payload: dict[str, Any]) -> dict[str, Any]:
                msg = await client.request(
                    f"bank.cmds.{command}",
                    json.dumps(payload).encode(),
                    headers={"x-ergonats-entity-key": k, **ANN},
                    timeout=10,
                )
                return json.loads(msg.data)

            opened = await asyncio.gather(
                *(send("open_account", k, {"owner": "ann", "initial_balance": 100}) for k in keys)
            )
            assert all(reply["accepted"] for reply in opened), opened
            for round_ in range(3):  # one entity's commands in order, across the hops
                replies = await asyncio.gather(*(send("deposit", k, {"amount": 5}) for k in keys))
                assert [r["version"] for r in replies] == [round_ + 2] * len(keys), replies

            services = [runtime.services["bankaccount"] for runtime in runtimes]
            owned = [[k for k in keys if runtimes[0].partition.owner(k) == i] for i in range(2)]  # type: ignore[union-attr]
            assert owned[0] and owned[1]
            for service, mine in zip(services, owned, strict=True):
                assert service.handled == 4 * len(mine)  # answered: exactly the commands of its keys
                assert set(service._slots) == set(mine)  # warm: only its own entities
            assert sum(service.passed_on for service in services) > 0  # NATS handed some to the other one

            kv = await client.jetstream().key_value("AGG_bankaccount")
            deadline = time.monotonic() + 20
            while True:
                versions = {k: json.loads((await kv.get(k)).value)["version"] for k in keys if await _has(kv, k)}
                if versions == dict.fromkeys(keys, 4):
                    break
                assert time.monotonic() < deadline, f"snapshots not converged: {versions}"
                await asyncio.sleep(0.2)
            # a snapshot writer handed some events of the other worker's keys over, whatever split
            # the shared consumer made (only 2^-240 of the splits give every event to its owner)
            assert sum(p.handed_over for runtime in runtimes for p in runtime.projectors) > 0

    try:
        run(scenario(), timeout=90)
    finally:
        server.stop()


def test_a_draining_worker_still_answers_what_the_others_pass_on(tmp_path: Path, project: Project) -> None:
    """Workers get the signal at about the same time, not at once: while one has left the queue
    group, the other may still pass it commands for its keys; it answers them for a grace period."""
    server = start_server(tmp_path / "nats")

    async def scenario() -> None:
        async with two_workers(server.url, project.aggregates["bankaccount"]) as (runtimes, client):
            partition = runtimes[0].partition
            assert partition is not None
            candidates = [f"d-{i}-{uuid.uuid4().hex[:6]}" for i in range(40)]
            keys = [k for k in candidates if partition.owner(k) == 1]  # worker 1's
            draining = runtimes[1].services["bankaccount"]
            stopping = asyncio.create_task(draining.stop())
            while draining.service is not None:  # noqa: ASYNC110 - until it has left the queue group (no event tells)
                await asyncio.sleep(0.005)
            replies = await asyncio.gather(
                *(
                    client.request(
                        "bank.cmds.open_account",
                        b'{"owner": "ann", "initial_balance": 100}',
                        headers={"x-ergonats-entity-key": k, **ANN},
                        timeout=5,
                    )
                    for k in keys
                )
            )
            assert all(json.loads(r.data)["accepted"] for r in replies)
            assert not stopping.done()  # still in its grace period
            assert draining.handled == len(keys)  # answered by the owner, passed on by the other
            await stopping

    try:
        run(scenario(), timeout=60)
    finally:
        server.stop()


async def _has(kv: Any, k: str) -> bool:
    try:
        await kv.get(k)
    except KeyNotFoundError:
        return False
    return True


def _start(url: str, log: Path, session: bool, ready: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "esfsm", "run", *RUNTIME_PATHS, "--server", url, "--workers", "2"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if k != "NATS_URL"},
            start_new_session=session,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - it only calls prctl
        )
    deadline = time.monotonic() + 30
    while ready not in log.read_text():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return process


@contextmanager
def _workers_run(
    tmp_path: Path, session: bool = False, ready: str = "worker=0 msg=ready"
) -> Iterator[tuple[Any, subprocess.Popen[bytes], Path]]:
    """A server of its own and `esfsm run --workers 2` on it: (server, process, log); both stopped after."""
    server = start_server(tmp_path / "nats")
    log = tmp_path / "run.log"
    try:
        process = _start(server.url, log, session=session, ready=ready)
        try:
            yield server, process, log
        finally:
            if process.poll() is None:
                process.kill()
    finally:
        server.stop()


def _worker_pid(log: Path) -> int:
    for line in log.read_text().splitlines():
        if 'msg="started worker process"' in line:
            return int(line.rsplit("pid=", 1)[1].split()[0])
    raise AssertionError(log.read_text())


def test_run_with_workers_serves_and_drains_on_sigterm(tmp_path: Path) -> None:
    with _workers_run(tmp_path) as (server, process, log):

        async def scenario() -> None:
            nc = await nats.connect(server.url)
            try:
                inbox = nc.new_inbox()
                sub = await nc.subscribe(inbox)
                await nc.publish("$SRV.PING.aggregate-bankaccount", b"", reply=inbox)
                ids = set()
                deadline = time.monotonic() + 2
                while time.monotonic() < deadline:
                    try:
                        ids.add(json.loads((await sub.next_msg(timeout=0.5)).data)["id"])
                    except nats.errors.TimeoutError:
                        break
                assert len(ids) == 2  # one service instance per worker
                for i in range(20):
                    k = f"wp-{i}-{uuid.uuid4().hex[:6]}"
                    msg = await nc.request(
                        "bank.cmds.open_account",
                        b'{"owner": "ann", "initial_balance": 100}',
                        headers={"x-ergonats-entity-key": k, **ANN},
                        timeout=10,
                    )
                    assert json.loads(msg.data)["accepted"], msg.data
            finally:
                await nc.close()

        run(scenario())
        worker = _worker_pid(log)
        assert stop_process(process, 30) == 0, log.read_text()
        with pytest.raises(ProcessLookupError):
            os.kill(worker, 0)
        text = log.read_text()
        assert "worker=1 msg=stopped" in text and "worker=0 msg=stopped" in text
        assert "level=error" not in text


def test_ctrl_c_to_the_process_group_stops_every_worker_cleanly(tmp_path: Path) -> None:
    """A terminal's Ctrl-C signals every process of its group: the workers have sessions of
    their own, so only the parent gets it, drains and stops them."""
    with _workers_run(tmp_path, session=True) as (_server, process, log):
        worker = _worker_pid(log)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(30) == 0, log.read_text()
        with pytest.raises(ProcessLookupError):
            os.kill(worker, 0)
        assert "level=error" not in log.read_text()


def test_ctrl_c_while_a_worker_is_still_starting_is_a_clean_stop(tmp_path: Path) -> None:
    """Ctrl-C while the worker is still starting (it takes ~0.5 s to import): the parent stops
    it, and a worker stopped before it served anything is no failure (it used to die of the
    SIGINT, and the run exited 1)."""
    with _workers_run(tmp_path, session=True, ready='msg="started worker process"') as (_server, process, log):
        os.killpg(process.pid, signal.SIGINT)  # the worker is still importing: it takes ~0.5 s
        assert process.wait(30) == 0, log.read_text()
        assert "level=error" not in log.read_text()


def test_run_stops_with_status_1_when_a_worker_dies(tmp_path: Path) -> None:
    with _workers_run(tmp_path) as (_server, process, log):
        os.kill(_worker_pid(log), signal.SIGKILL)
        assert process.wait(30) == 1
        assert "worker 1 exited with status -9 while serving" in log.read_text()


def test_run_rejects_bad_worker_options() -> None:
    runner = CliRunner(env={"NATS_URL": None})
    definitions = RUNTIME_PATHS[0]
    result = runner.invoke(main, ["run", definitions, "--workers", "0"])
    assert result.exit_code == 2 and "--workers" in result.output
    result = runner.invoke(main, ["run", definitions, "--worker", "nonsense", "--server", "nats://127.0.0.1:1"])
    assert result.exit_code == 2 and "GROUP:INDEX/COUNT" in result.output
    result = runner.invoke(main, ["run", definitions, "--worker", "g:1/2"])
    assert result.exit_code == 2 and "needs --server" in result.output
    result = runner.invoke(main, ["run", definitions, "--worker", "g:1/2", "--workers", "2", "--server", "x"])
    assert result.exit_code == 2 and "no workers of its own" in result.output


def test_workers_get_the_connection_options_with_secrets_only_in_the_environment() -> None:
    options = ConnectOptions(
        user="ann", password="s3cret", token="t0ken", creds="/etc/nats/app.creds", tls_ca="ca.pem", js_domain="hub"
    )
    args, env = options.for_worker()
    assert args == ["--creds", "/etc/nats/app.creds", "--tls-ca", "ca.pem", "--js-domain", "hub"]
    assert env == {"NATS_USER": "ann", "NATS_PASSWORD": "s3cret", "NATS_TOKEN": "t0ken"}
    assert ConnectOptions().for_worker() == ([], {})
