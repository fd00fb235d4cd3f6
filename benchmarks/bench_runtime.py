"""Benchmark: the esfsm runtime on NATS JetStream against the JetStream ceiling.

Everything runs on 127.0.0.1 and is started (and stopped) by this script:

* a nats-server with JetStream (``EmbeddedServer``, free port, temp store);
* the runtime as a separate process:
  ``python -m esfsm run definitions/bankaccount.yaml --server URL``
  (with ``--workers N`` when given);
* each measurement in a separate client process (this script re-invoked with
  ``--client-mode``), using plain nats-py and orjson, so the client never
  shares a Python interpreter with the runtime.

Two loops, each driving the same number of operations with ``--concurrency``
in flight (that many worker tasks on one connection):

runtime
    Open ``--keys`` accounts (timed separately), then ``--commands`` seeded
    deposits and withdrawals over those keys: ``nc.request`` to
    ``bank.cmds.<command>`` with the headers ``x-ergonats-entity-key`` and
    ``x-username``. Every ``REJECT_EVERY``-th command is a withdrawal far above
    any balance and must be rejected; the others are accepted. Afterwards the
    client verifies that the stream grew by exactly opens + accepted events and
    that within ``--settle`` seconds (10) of the loop's end a sample of KV
    entries (bucket ``AGG_bankaccount``) have the expected version and balance.
    It then waits (up to ``--drain`` seconds) for the snapshot consumer
    ``AGG_bankaccount`` to have nothing pending, so that the next loop never
    runs beside a busy runtime, and reports the consumer's backlog at the end
    of the loop and how long it took to catch up.

ceiling
    The same number of JetStream publishes with ack (``js.publish``) of a
    CloudEvent-like JSON body (~325 B), on a stream
    ``CEIL`` (``ceil.>``, file storage), subjects ``ceil.<key>.<type>`` over
    the same keys. This is what a client gets from JetStream with no runtime in
    between: the best the runtime could hope for.

With ``--repeat`` > 1 the two loops alternate (which one goes first alternates
too) and the medians are reported, with the CPU the runtime, the server and
the client used per operation during the timed loop (from /proc). The last
line printed is ``ratio: X.XX`` = runtime commands/s ÷ ceiling messages/s.
Any failed check (a timeout, an unexpected rejection, a wrong event count, a
KV snapshot not right in time, an error in the runtime's log, a runtime that
does not stop cleanly) is printed as ``FAILED: ...`` and the exit status is
1; the figures and the ratio line are printed all the same.

Usage (from anywhere; paths are resolved from this file)::

    python benchmarks/bench_runtime.py [--commands 20000] [--keys 1000]
        [--concurrency 64] [--repeat 3] [--workers 1] [--seed 42] [--settle 10]
        [--drain 180] [--py-spy OUT.svg] [--keep]

Scale mode, ``--scale 1000,100000,past [--cache-entities 20000] [--past N]``: per point (a
number of entities, or more than the runtime's cache holds) and run, a server and runtime of
their own; the ceiling at that many keys, the first commands (an open per entity, timed;
past the cap, the opens below and past it separately) and the warm deposits, each as
per second, p50/p99 and ÷ the ceiling, then ``first commands past the cap / below it = X``.
See benchmarks/README.md.

``--workers N`` runs the runtime as ``esfsm run --workers N`` (N processes
sharing out the keys); the runtime CPU column then adds up all of them.

``--py-spy OUT`` records the runtime process with py-spy (if installed) during
the first timed runtime loop and writes a flame graph (``.svg``) or a
speedscope profile (``.json``) or collapsed stacks (``.txt``).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

DEFINITION = REPO_ROOT / "definitions" / "bankaccount.yaml"
COMMANDS_PREFIX = "bank.cmds"
EVENTS_STREAM = "BANK_EVENTS"
BUCKET = "AGG_bankaccount"
KEY_HEADER = "x-ergonats-entity-key"
USER_HEADER = "x-username"
CEIL_STREAM = "CEIL"
INITIAL_BALANCE = 1_000
REJECT_EVERY = 25  # every 25th command is a withdrawal that must be rejected (4 %)
HUGE = 10**12
REQUEST_TIMEOUT = 10.0
KV_SAMPLE = 200
CPU_KEYS = ("cpu_runtime_us", "cpu_server_us", "cpu_client_us")
SLOW = 0.030  # seconds: scale mode notes when each slower command started (to line up with a probe)


# ---------------------------------------------------------------------------
# workload


def workload(commands: int, keys: list[str], seed: int) -> list[tuple[str, str, bytes]]:
    """(key, command, payload) for the timed loop. Deposits slightly outweigh withdrawals,
    so balances drift upwards and ordinary withdrawals are accepted."""
    rng = random.Random(seed)
    out: list[tuple[str, str, bytes]] = []
    for i in range(commands):
        key = keys[rng.randrange(len(keys))]
        if i % REJECT_EVERY == REJECT_EVERY - 1:
            out.append((key, "withdraw", orjson.dumps({"amount": HUGE})))
        elif rng.random() < 0.55:
            out.append((key, "deposit", orjson.dumps({"amount": rng.randint(1, 100)})))
        else:
            out.append((key, "withdraw", orjson.dumps({"amount": rng.randint(1, 50)})))
    return out


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), None where unknown."""
    if not pid:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of pid and of its children (the worker processes of `esfsm run --workers`)."""
    total = cpu_seconds(pid)
    if total is None:
        return None
    try:
        children = [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except (OSError, ValueError):
        children = []
    return total + sum(tree_cpu_seconds(child) or 0.0 for child in children)


class CpuMeter:
    """CPU used by the runtime, the server and this client during the timed loop."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.pids = {"runtime": args.runtime_pid, "server": args.server_pid}
        self.start: dict[str, float | None] = {}

    def __enter__(self) -> CpuMeter:
        self.start = {name: tree_cpu_seconds(pid) for name, pid in self.pids.items()}
        self.start["client"] = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.used: dict[str, float] = {}
        for name, pid in self.pids.items():
            now, before = tree_cpu_seconds(pid), self.start.get(name)
            if now is not None and before is not None:
                self.used[name] = now - before
        self.used["client"] = time.process_time() - (self.start["client"] or 0.0)

    def per_op_us(self, ops: int) -> dict[str, float]:
        return {f"cpu_{name}_us": used / ops * 1e6 for name, used in self.used.items()} if ops else {}


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def summary(latencies: list[float], elapsed: float) -> dict[str, float]:
    latencies.sort()
    return {
        "per_s": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "elapsed_s": elapsed,
    }


async def drive(
    count: int, concurrency: int, one: Any, deadline: float, slow: list[tuple[float, float]] | None = None
) -> tuple[list[float], float]:
    """Run one(i) for i in range(count) with `concurrency` workers; latencies and elapsed seconds.
    slow, if given, gets (monotonic start, latency) of every operation over SLOW seconds."""
    latencies: list[float] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            if time.monotonic() > deadline:
                raise TimeoutError("the loop ran past its time bound")
            i = next_index
            next_index += 1
            started = time.perf_counter()
            await one(i)
            took = time.perf_counter() - started
            latencies.append(took)
            if slow is not None and took > SLOW:
                slow.append((time.monotonic() - took, took))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
    return latencies, time.perf_counter() - started


# ---------------------------------------------------------------------------
# client processes


def _seconds(value: float | None) -> str:
    return "never" if value is None or math.isnan(value) else f"{value:.1f}s"


async def wait_drained(js: Any, limit: float) -> float | None:
    """When (monotonic) the runtime's snapshot consumer had nothing pending; None: not within limit."""
    started = time.monotonic()
    while time.monotonic() - started <= limit:
        info = await js.consumer_info(EVENTS_STREAM, f"AGG_{BUCKET.removeprefix('AGG_')}")
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return time.monotonic()
        await asyncio.sleep(0.2)
    return None


async def client_runtime(args: argparse.Namespace) -> dict[str, Any]:
    import nats

    nc = await nats.connect(args.url, name="bench-runtime-client", allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=10)
        before = (await js.stream_info(EVENTS_STREAM)).state.messages
        keys = [f"b{args.run}-{i:06d}" for i in range(args.keys)]
        # the timed commands go to the last --warm keys opened (all of them by default): in scale
        # mode, past the runtime's cache cap, those are the entities it still holds
        work = workload(args.commands, keys[-args.warm :] if args.warm else keys, args.seed + args.run)
        base = {USER_HEADER: "bench"}
        versions = dict.fromkeys(keys, 0)
        balances = dict.fromkeys(keys, 0)
        problems: list[str] = []
        deadline = time.monotonic() + args.time_bound

        open_body = [orjson.dumps({"owner": f"owner {k}", "initial_balance": INITIAL_BALANCE}) for k in keys]

        async def open_one(i: int) -> None:
            key = keys[i]
            msg = await nc.request(
                f"{COMMANDS_PREFIX}.open_account", open_body[i], REQUEST_TIMEOUT, headers={**base, KEY_HEADER: key}
            )
            reply = orjson.loads(msg.data)
            if not reply.get("accepted"):
                problems.append(f"open {key} rejected: {reply.get('message')}")
                return
            versions[key] = 1
            balances[key] = INITIAL_BALANCE

        # first commands: one open per entity, cold and new; with --split, the opens up to it
        # (below the cache cap) and those after it (past the cap) are timed separately
        spans = [(0, args.split), (args.split, len(keys))] if 0 < args.split < len(keys) else [(0, len(keys))]
        phases: list[dict[str, Any]] = []
        for start, end in spans:
            with CpuMeter(args) as open_cpu:
                lat, took = await drive(
                    end - start, args.concurrency, lambda i, start=start: open_one(start + i), deadline
                )
            phases.append({**summary(lat, took), **open_cpu.per_op_us(len(lat)), "entities": end - start})
        open_elapsed = sum(phase["elapsed_s"] for phase in phases)
        opens_drained = float("nan")
        if args.drain_first:  # scale mode: the timed loop starts once the opens' snapshots are written
            drain_started = time.monotonic()
            drained_at = await wait_drained(js, args.drain)
            if drained_at is not None:
                opens_drained = drained_at - drain_started
            else:
                problems.append(f"the snapshot writer still had the opens' backlog {args.drain:g}s after them")

        accepted = rejected = unexpected = 0

        async def command_one(i: int) -> None:
            nonlocal accepted, rejected, unexpected
            key, command, body = work[i]
            msg = await nc.request(
                f"{COMMANDS_PREFIX}.{command}", body, REQUEST_TIMEOUT, headers={**base, KEY_HEADER: key}
            )
            reply = orjson.loads(msg.data)
            amount = orjson.loads(body)["amount"]
            if reply.get("accepted"):
                accepted += 1
                versions[key] += 1
                balances[key] += amount if command == "deposit" else -amount
                # per-key order: replies of one key may interleave, so only check bounds
                if reply.get("version") != versions[key] and (
                    not isinstance(reply.get("version"), int) or reply["version"] < 2
                ):
                    problems.append(f"{key}: odd version in reply {reply.get('version')!r}")
            else:
                rejected += 1
                if amount != HUGE:
                    unexpected += 1
                    if len(problems) < 10:
                        problems.append(f"{command} {key} {amount} rejected: {reply.get('message')}")

        slow: list[tuple[float, float]] | None = [] if args.drain_first else None
        loop_start = time.monotonic()
        with CpuMeter(args) as cpu:
            latencies, elapsed = await drive(len(work), args.concurrency, command_one, deadline, slow)
        loop_end = time.monotonic()
        try:  # how far the snapshot writer is behind when the loop ends
            consumer = await js.consumer_info(EVENTS_STREAM, f"AGG_{BUCKET.removeprefix('AGG_')}")
            backlog = consumer.num_pending + consumer.num_ack_pending
        except Exception:  # noqa: BLE001 - informational only
            backlog = -1

        # -- verification ------------------------------------------------------
        info = await js.stream_info(EVENTS_STREAM)
        grew = info.state.messages - before
        expected_events = sum(1 for v in versions.values() if v) + accepted
        if grew != expected_events:
            problems.append(
                f"stream {EVENTS_STREAM} grew by {grew} events, expected {expected_events} (opens + accepted)"
            )
        avg_event = info.state.bytes / info.state.messages if info.state.messages else 0
        kv = await js.key_value(BUCKET)
        sample = random.Random(args.seed).sample(keys, min(KV_SAMPLE, len(keys)))
        settle_started = time.monotonic()

        async def check_sample() -> list[str]:
            wrong = []
            for key in sample:
                try:
                    entry = await kv.get(key)
                    value = orjson.loads(entry.value) if entry.value else {}
                except Exception as err:  # noqa: BLE001 - not there yet
                    value = {"error": type(err).__name__}
                data = value.get("data") or {}
                if value.get("version") != versions[key] or data.get("balance") != balances[key]:
                    wrong.append(
                        f"{key}: kv version {value.get('version')!r} balance {data.get('balance')!r}, "
                        f"expected {versions[key]} / {balances[key]}"
                    )
            return wrong

        while True:
            mismatched = await check_sample()
            if not mismatched or time.monotonic() - settle_started > args.settle:
                break
            await asyncio.sleep(0.2)
        settle = time.monotonic() - settle_started
        # Whatever the sample says, let the snapshot writer finish its backlog before the
        # next loop, so the ceiling never runs beside a busy runtime.
        drained_at = await wait_drained(js, args.drain)
        caught_up = drained_at - loop_end if drained_at is not None else None
        if mismatched:
            problems.append(
                f"{len(mismatched)}/{len(sample)} KV snapshots wrong {settle:.1f}s after the loop "
                f"(limit --settle {args.settle:g}s), e.g. {mismatched[0]}"
            )
            if caught_up is not None:
                still = await check_sample()
                problems.append(
                    f"the snapshot writer caught up {caught_up:.1f}s after the loop; then "
                    + (
                        f"{len(still)} KV snapshots still wrong, e.g. {still[0]}"
                        if still
                        else "every sampled KV snapshot was right (lag, not loss)"
                    )
                )
        if caught_up is None:
            problems.append(f"the snapshot writer still had a backlog {args.drain:g}s after the loop")
        return {
            "kind": "runtime",
            **summary(latencies, elapsed),
            **cpu.per_op_us(len(latencies)),
            "open_per_s": len(keys) / open_elapsed if open_elapsed else 0.0,
            "open_phases": phases,
            "opens_drained_s": opens_drained,
            "loop_monotonic": [loop_start, loop_end],
            "slow_commands": slow or [],
            "opens": len(keys),
            "accepted": accepted,
            "rejected": rejected,
            "unexpected_rejections": unexpected,
            "events_stored": grew,
            "avg_event_bytes": avg_event,
            "kv_checked": len(sample),
            "snapshot_backlog": backlog,
            "snapshot_caught_up_s": caught_up if caught_up is not None else float("nan"),
            "kv_settle_s": settle,
            "problems": problems,
        }
    finally:
        await nc.close()


def ceiling_body(key: str, amount: int) -> bytes:
    """A CloudEvent-shaped body of about the size of the runtime's stored events."""
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "esfsm/bankaccount",
            "type": "funds_deposited",
            "subject": key,
            "time": "2026-01-01T00:00:00.000000+00:00",
            "datacontenttype": "application/json",
            "entitykey": key,
            "data": {"amount": amount},
        }
    )


async def client_ceiling(args: argparse.Namespace) -> dict[str, Any]:
    import nats
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    nc = await nats.connect(args.url, name="bench-ceiling-client", allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=REQUEST_TIMEOUT)
        try:
            before = (await js.stream_info(CEIL_STREAM)).state.messages
        except NotFoundError:
            await js.add_stream(
                StreamConfig(
                    name=CEIL_STREAM,
                    subjects=["ceil.>"],
                    storage=StorageType.FILE,
                    duplicate_window=120.0,
                    allow_direct=True,
                )
            )
            before = 0
        keys = [f"c{args.run}-{i:06d}" for i in range(args.keys)]
        work = workload(args.commands, keys, args.seed + args.run)
        bodies = [
            (
                f"ceil.{key}.{'funds_deposited' if c == 'deposit' else 'funds_withdrawn'}",
                ceiling_body(key, orjson.loads(b)["amount"]),
            )
            for key, c, b in work
        ]
        deadline = time.monotonic() + args.time_bound
        seqs = 0

        async def publish_one(i: int) -> None:
            nonlocal seqs
            subject, body = bodies[i]
            ack = await js.publish(subject, body)
            seqs += 1 if ack.seq else 0

        with CpuMeter(args) as cpu:
            latencies, elapsed = await drive(len(bodies), args.concurrency, publish_one, deadline)
        info = await js.stream_info(CEIL_STREAM)
        problems = []
        if info.state.messages - before != len(bodies) or seqs != len(bodies):
            problems.append(
                f"{CEIL_STREAM} grew by {info.state.messages - before}, acks {seqs}, expected {len(bodies)}"
            )
        return {
            "kind": "ceiling",
            **summary(latencies, elapsed),
            **cpu.per_op_us(len(latencies)),
            "avg_event_bytes": info.state.bytes / info.state.messages if info.state.messages else 0,
            "problems": problems,
        }
    finally:
        await nc.close()


def client_main(args: argparse.Namespace) -> int:
    runner = client_runtime if args.client_mode == "runtime" else client_ceiling
    try:
        result = asyncio.run(runner(args))
    except Exception as err:  # noqa: BLE001 - reported to the parent as a problem
        result = {"kind": args.client_mode, "problems": [f"client failed: {type(err).__name__}: {err}"]}
    print(orjson.dumps(result).decode(), flush=True)
    return 0


# ---------------------------------------------------------------------------
# orchestration


def ephemeral_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def runtime_env(esfsm_path: str | None) -> dict[str, str]:
    """The runtime process's environment: no NATS_URL; with --esfsm-path, that checkout's code."""
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    if esfsm_path:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(esfsm_path).resolve()), *filter(None, [env.get("PYTHONPATH")])])
    return env


def probe_runtime(env: dict[str, str], script: str | None) -> tuple[str, bool]:
    """Which esfsm the runtime process imports, and whether its `run` takes --cache-entities."""
    where = subprocess.run(
        [sys.executable, "-c", "import esfsm; print(esfsm.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
        timeout=60,
        check=False,
    )
    helped = subprocess.run(
        [sys.executable, *([script] if script else ["-m", "esfsm"]), "run", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
        timeout=60,
        check=False,
    )
    return where.stdout.strip() or where.stderr.strip()[-300:], "--cache-entities" in helped.stdout


class Runtime:
    """`python -m esfsm run bankaccount.yaml --server URL` in a child process."""

    def __init__(
        self,
        url: str,
        workdir: Path,
        script: str | None = None,
        workers: int = 1,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.workers = workers
        self.extra = extra or []
        self.env = env if env is not None else runtime_env(None)
        self.entry = [script] if script else ["-m", "esfsm"]
        self.workdir = workdir
        self.log_path = workdir / "runtime.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    *self.entry,
                    "run",
                    str(DEFINITION),
                    "--server",
                    self.url,
                    "--store-dir",
                    str(self.workdir / "esfsm-store"),
                    "--log-level",
                    "info",
                    *(["--workers", str(self.workers)] if self.workers > 1 else []),
                    *self.extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env=self.env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"runtime exited with {self.process.returncode}:\n{self.log()}")
            ready = "worker=0 msg=ready" if self.workers > 1 else "msg=ready"
            if ready in self.log():
                return
            time.sleep(0.05)
        raise RuntimeError(f"runtime not ready within {timeout:.0f}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process is None:
            return None
        # esfsm is imported by the orchestrator only, never by the client processes
        from esfsm.runtime.server import stop_process

        code = stop_process(self.process, timeout)
        self.process = None
        return code


def run_client(
    mode: str,
    url: str,
    run: int,
    args: argparse.Namespace,
    pids: dict[str, int],
    keys: int | None = None,
    extra: list[str] | None = None,
    slow_opens: int = 0,
) -> dict[str, Any]:
    keys = keys or args.keys
    # slow_opens: opens that may crawl (the baseline past its cache cap: ~20 a second)
    bound = max(60.0, args.commands / 200.0 + keys / 100.0 + slow_opens / 5.0 + (args.drain if extra else 0.0))
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--client-mode",
        mode,
        "--url",
        url,
        "--run",
        str(run),
        "--commands",
        str(args.commands),
        "--keys",
        str(keys),
        *(extra or []),
        "--concurrency",
        str(args.concurrency),
        "--seed",
        str(args.seed),
        "--settle",
        str(args.settle),
        "--drain",
        str(args.drain),
        "--time-bound",
        str(bound),
        "--runtime-pid",
        str(pids.get("runtime", 0)),
        "--server-pid",
        str(pids.get("server", 0)),
    ]
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    try:
        done = subprocess.run(
            cmd, capture_output=True, timeout=bound + args.settle + args.drain + 60, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return {"kind": mode, "problems": [f"{mode} client did not finish within its time bound"]}
    lines = [line for line in done.stdout.decode().splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"kind": mode, "problems": [f"{mode} client exited {done.returncode}: {done.stderr.decode()[-2000:]}"]}
    return orjson.loads(lines[-1])


def start_py_spy(pid: int, out: str, seconds: float) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy")
    if exe is None:
        print("py-spy not found; --py-spy ignored", file=sys.stderr)
        return None
    fmt = "speedscope" if out.endswith(".json") else "raw" if out.endswith(".txt") else "flamegraph"
    return subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--output",
            out,
            "--format",
            fmt,
            "--duration",
            str(max(1, int(seconds))),
            "--rate",
            "200",
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def orchestrate(args: argparse.Namespace) -> int:
    from esfsm.runtime.server import EmbeddedServer

    workdir = Path(tempfile.mkdtemp(prefix="esfsm-bench-"))
    server = EmbeddedServer(workdir / "nats", port=ephemeral_port(), host="127.0.0.1")
    runtime: Runtime | None = None
    results: dict[str, list[dict[str, Any]]] = {"runtime": [], "ceiling": []}
    problems: list[str] = []
    profiler: subprocess.Popen[bytes] | None = None
    try:
        server.start()
        runtime = Runtime(server.url, workdir, args.runtime_script, args.workers, env=runtime_env(args.esfsm_path))
        if args.esfsm_path:
            print(f"runtime code: {probe_runtime(runtime.env, args.runtime_script)[0]}", flush=True)
        runtime.start()
        assert runtime.process is not None
        print(
            f"nats-server {server.url} (pid {server.process.pid if server.process else '?'}), "
            f"runtime pid {runtime.process.pid}, workdir {workdir}",
            flush=True,
        )
        print(
            f"N={args.commands} commands over K={args.keys} keys, C={args.concurrency} in flight, "
            f"repeat {args.repeat}, runtime workers {args.workers}",
            flush=True,
        )
        pids = {"runtime": runtime.process.pid, "server": server.process.pid if server.process else 0}
        fatal = False
        for run in range(args.repeat):
            order = ["runtime", "ceiling"] if run % 2 == 0 else ["ceiling", "runtime"]
            for mode in order:
                if mode == "runtime" and args.py_spy and profiler is None:
                    # starts while the client opens the accounts; covers the timed loop
                    profiler = start_py_spy(
                        runtime.process.pid, args.py_spy, args.commands / 1500.0 + args.keys / 1000.0 + 2
                    )
                    if profiler is None:
                        args.py_spy = None
                result = run_client(mode, server.url, run, args, pids)
                results[mode].append(result)
                problems.extend(f"run {run + 1} {mode}: {problem}" for problem in result.get("problems", []))
                if "per_s" in result:
                    extra = ""
                    if mode == "runtime":
                        extra = (
                            f" accepted={result['accepted']} rejected={result['rejected']}"
                            f" opens/s={result['open_per_s']:,.0f}"
                            f" snapshot_backlog={result['snapshot_backlog']}"
                            f" caught_up={_seconds(result['snapshot_caught_up_s'])}"
                        )
                    cpu = " ".join(f"{k[4:-3]}={result[k]:.0f}" for k in CPU_KEYS if k in result)
                    print(
                        f"run {run + 1} {mode:<8} {result['per_s']:>9,.0f}/s "
                        f"p50 {result['p50_ms']:6.2f} ms p99 {result['p99_ms']:6.2f} ms"
                        f" cpu µs/op: {cpu or 'n/a'}{extra}",
                        flush=True,
                    )
                if "per_s" not in result:
                    fatal = True
                if runtime.process.poll() is not None:
                    problems.append(f"runtime exited with {runtime.process.returncode}")
                    fatal = True
                if fatal:
                    break
            if fatal:  # a failed check (e.g. snapshot lag) still lets the other runs go on
                break
        if profiler is not None:
            try:
                _, err = profiler.communicate(timeout=60)
                if profiler.returncode:
                    print(f"py-spy failed: {err.decode()[-500:]}", file=sys.stderr)
                else:
                    print(f"py-spy profile of the runtime: {args.py_spy}", flush=True)
            except subprocess.TimeoutExpired:
                profiler.kill()
    finally:
        if profiler is not None and profiler.poll() is None:
            profiler.terminate()
            profiler.wait(10)
        code = runtime.stop() if runtime is not None else None
        if code not in (None, 0):
            problems.append(f"runtime exited with {code} on SIGTERM")
        if runtime is not None and ("level=error" in runtime.log()):
            errors = [line for line in runtime.log().splitlines() if "level=error" in line]
            problems.append(f"runtime logged {len(errors)} errors, e.g. {errors[0][:300]}")
        server.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    ok_runtime = [r for r in results["runtime"] if "per_s" in r]
    ok_ceiling = [r for r in results["ceiling"] if "per_s" in r]
    if ok_runtime and ok_ceiling:
        metrics = ("per_s", "p50_ms", "p99_ms", *CPU_KEYS)
        med = {
            kind: {m: statistics.median(r[m] for r in rows) for m in metrics if all(m in r for r in rows)}
            for kind, rows in (("runtime", ok_runtime), ("ceiling", ok_ceiling))
        }
        last = ok_runtime[-1]
        print()
        print(
            f"medians of {len(ok_runtime)} run(s); N={args.commands}, K={args.keys}, C={args.concurrency}; "
            f"CPU in µs per command / message, during the timed loop"
        )
        print(
            f"| {'loop':<27} | {'per second':>10} | {'p50 ms':>7} | {'p99 ms':>7} "
            f"| {'runtime CPU':>11} | {'server CPU':>10} | {'client CPU':>10} |"
        )
        print(f"| {'-' * 27} | {'-' * 9}: | {'-' * 6}: | {'-' * 6}: | {'-' * 10}: | {'-' * 9}: | {'-' * 9}: |")
        for name, kind in (("runtime: command → reply", "runtime"), ("ceiling: js.publish + ack", "ceiling")):
            m = med[kind]
            cpu = [
                f"{m[k]:>{w},.0f}" if k in m else f"{'-':>{w}}"
                for k, w in (("cpu_runtime_us", 11), ("cpu_server_us", 10), ("cpu_client_us", 10))
            ]
            if kind == "ceiling":
                cpu[0] = f"{'-':>11}"
            print(
                f"| {name:<27} | {m['per_s']:>10,.0f} | {m['p50_ms']:>7.2f} | {m['p99_ms']:>7.2f} "
                f"| {cpu[0]} | {cpu[1]} | {cpu[2]} |"
            )
        print(
            f"runtime: {last['accepted']} accepted, {last['rejected']} rejected (expected: every "
            f"{REJECT_EVERY}th), opens {statistics.median(r['open_per_s'] for r in ok_runtime):,.0f}/s, "
            f"events stored {last['events_stored']} ({last['avg_event_bytes']:.0f} B/msg stored, ceiling "
            f"{ok_ceiling[-1]['avg_event_bytes']:.0f} B/msg); snapshot backlog at loop end "
            f"{statistics.median(r['snapshot_backlog'] for r in ok_runtime):,.0f} events, "
            f"snapshots caught up {statistics.median(r['snapshot_caught_up_s'] for r in ok_runtime):.1f}s "
            f"after the loop; KV sample of {last['kv_checked']} checked"
        )
    if not (ok_runtime and ok_ceiling) and not problems:
        problems.append("no complete run")
    for problem in problems:
        print(f"FAILED: {problem}")
    if ok_runtime and ok_ceiling:  # the figures stand even when a check failed; the exit code says which
        print(f"ratio: {med['runtime']['per_s'] / med['ceiling']['per_s']:.2f}")
    return 1 if problems else 0


# ---------------------------------------------------------------------------
# scale mode: first commands and deposits at several numbers of entities


DEFAULT_CACHE = 100_000  # entities the runtime keeps warm when `esfsm run` has no --cache-entities


def parse_points(text: str) -> list[int | str]:
    """`1000,100000,past` → [1000, 100000, "past"]; "past": more entities than the cache holds."""
    points: list[int | str] = []
    for item in filter(None, (part.strip().replace("_", "") for part in text.split(","))):
        if item in ("past", "cap"):
            points.append("past")
        elif item.isdigit() and int(item) > 0:
            points.append(int(item))
        else:
            raise ValueError(f"not a number of entities nor 'past': {item!r}")
    if not points:
        raise ValueError("no points")
    return points


def probe_summary(probe: dict[str, Any], rt: dict[str, Any]) -> str:
    """What benchmarks/probe_runtime.py saw in the runtime during the timed deposits."""
    t0, t1 = rt["loop_monotonic"]
    stalls = [took for began, took, _ in probe["stalls"] if t0 <= began <= t1]
    stall_cpu = sum(cpu for began, _, cpu in probe["stalls"] if t0 <= began <= t1)
    gcs = [(gen, took) for began, gen, took, _ in probe["gc"] if t0 <= began <= t1]
    cycles = [(took, events, keys) for began, took, events, keys in probe["cycles"] if t0 <= began <= t1]
    slow = rt.get("slow_commands", [])
    gc2 = [took for gen, took in gcs if gen == 2]
    gc1 = [took for gen, took in gcs if gen == 1]
    return (
        f"loop stalls >20 ms: {len(stalls)}, {sum(stalls) * 1000:,.0f} ms in all, longest "
        f"{max(stalls, default=0) * 1000:.0f} ms, the loop busy {stall_cpu * 1000:,.0f} ms of them; "
        f"gc gen2 {len(gc2)} taking {sum(gc2) * 1000:.0f} ms (longest {max(gc2, default=0) * 1000:.0f}), "
        f"gen1 {len(gc1)} taking {sum(gc1) * 1000:.0f} ms; "
        f"snapshot cycles {len(cycles)}: {sum(c[1] for c in cycles):,} events over "
        f"{sum(c[2] for c in cycles):,} keys, longest {max((c[0] for c in cycles), default=0) * 1000:.0f} ms; "
        f"commands over {SLOW * 1000:.0f} ms: {len(slow)}"
    )


def _figures(m: dict[str, float]) -> str:
    return f"{m['per_s']:>8,.0f}/s p50 {m['p50_ms']:7.1f} ms p99 {m['p99_ms']:7.1f} ms"


def orchestrate_scale(args: argparse.Namespace) -> int:
    """Per point and run, a server and a runtime of their own: the ceiling at that many keys, then
    the point's first commands (an open per entity) and the timed deposits/withdrawals over its
    warm entities (after the opens' snapshots are written)."""
    from esfsm.runtime.server import EmbeddedServer

    points = parse_points(args.scale)
    env = runtime_env(args.esfsm_path)
    code_at, has_cache = probe_runtime(env, args.runtime_script)
    cap = args.cache_entities if (args.cache_entities and has_cache) else DEFAULT_CACHE
    past = args.past or max(1, cap // 2)
    print(f"runtime code: {code_at}; `esfsm run --cache-entities`: {'yes' if has_cache else 'no'}", flush=True)
    if args.cache_entities and not has_cache:
        print(f"this runtime has no --cache-entities: past the cap means past its {DEFAULT_CACHE:,}", flush=True)
    print(
        f"scale points {points}; N={args.commands} timed commands, C={args.concurrency} in flight, "
        f"repeat {args.repeat}; past the cap: {cap:,} entities cached, {past:,} more opened",
        flush=True,
    )
    rows: dict[str, list[dict[str, Any]]] = {}
    problems: list[str] = []
    for point in points:
        is_past = point == "past"
        label = f"past {cap:,}" if is_past else f"{point:,}"
        entities = cap + past if is_past else int(point)
        extra_rt = ["--cache-entities", str(cap)] if is_past and has_cache and args.cache_entities else []
        client_extra = ["--drain-first", "--split", str(cap if is_past else 0), "--warm", str(cap if is_past else 0)]
        for run in range(args.repeat):
            workdir = Path(tempfile.mkdtemp(prefix="esfsm-scale-"))
            server = EmbeddedServer(workdir / "nats", port=ephemeral_port(), host="127.0.0.1")
            runtime: Runtime | None = None
            got: dict[str, dict[str, Any]] = {}
            probed: dict[str, Any] | None = None
            try:
                server.start()
                runtime = Runtime(server.url, workdir, args.runtime_script, 1, extra=extra_rt, env=env)
                runtime.start()
                assert runtime.process is not None
                pids = {"runtime": runtime.process.pid, "server": server.process.pid if server.process else 0}
                order = ["ceiling", "runtime"] if run % 2 == 0 else ["runtime", "ceiling"]
                for mode in order:
                    result = run_client(
                        mode,
                        server.url,
                        run,
                        args,
                        pids,
                        keys=entities,
                        extra=client_extra if mode == "runtime" else None,
                        slow_opens=past if is_past else 0,
                    )
                    got[mode] = result
                    problems.extend(f"{label} run {run + 1} {mode}: {p}" for p in result.get("problems", []))
                    if "per_s" not in result or runtime.process.poll() is not None:
                        break
            except Exception as err:  # noqa: BLE001 - a server or runtime that would not start, say
                problems.append(f"{label} run {run + 1}: {type(err).__name__}: {str(err)[-1500:]}")
            finally:
                code = runtime.stop() if runtime is not None else None
                if code not in (None, 0):
                    problems.append(f"{label} run {run + 1}: runtime exited with {code} on SIGTERM")
                if runtime is not None and "level=error" in runtime.log():
                    errors = [line for line in runtime.log().splitlines() if "level=error" in line]
                    problems.append(
                        f"{label} run {run + 1}: runtime logged {len(errors)} errors, e.g. {errors[0][:300]}"
                    )
                server.stop()
                probe = workdir / "probe.json"  # written by benchmarks/probe_runtime.py (--runtime-script)
                probed = orjson.loads(probe.read_bytes()) if probe.exists() else None
                if args.keep:
                    print(f"kept {workdir}")
                else:
                    shutil.rmtree(workdir, ignore_errors=True)
            ceiling, rt = got.get("ceiling", {}), got.get("runtime", {})
            if "per_s" not in ceiling or "per_s" not in rt:
                continue
            row = {"ceiling": ceiling, "opens": rt["open_phases"], "deposits": rt, "point": label, "run": run + 1}
            if probed is not None:
                row["probe"] = probed
            rows.setdefault(label, []).append(row)
            print(f"{label:>12} run {run + 1} {'ceiling':<20} {_figures(ceiling)}", flush=True)
            names = (
                ["first commands"] if len(rt["open_phases"]) == 1 else ["first, below the cap", "first, past the cap"]
            )
            for name, phase in zip(names, rt["open_phases"], strict=False):
                print(
                    f"{label:>12} run {run + 1} {name:<20} {_figures(phase)} = "
                    f"{phase['per_s'] / ceiling['per_s']:.2f} of the ceiling ({phase['entities']:,} entities, "
                    f"runtime {phase.get('cpu_runtime_us', 0):.0f} µs/cmd)",
                    flush=True,
                )
            if probed is not None:
                print(f"{label:>12} run {run + 1} {'probe (deposits)':<20} {probe_summary(probed, rt)}", flush=True)
            print(
                f"{label:>12} run {run + 1} {'deposits':<20} {_figures(rt)} = {rt['per_s'] / ceiling['per_s']:.2f}"
                f" of the ceiling (runtime {rt.get('cpu_runtime_us', 0):.0f} µs/cmd; opens' snapshots written "
                f"{_seconds(rt['opens_drained_s'])} after them, deposits' {_seconds(rt['snapshot_caught_up_s'])})",
                flush=True,
            )

    if rows:
        med = statistics.median
        print()
        print(
            f"medians of {args.repeat} run(s) per point; N={args.commands} timed commands, C={args.concurrency}; "
            "÷ ceiling: per second ÷ the JetStream publish ceiling at as many keys, same run"
        )
        print("| entities | phase | per second | p50 ms | p99 ms | ÷ ceiling | ceiling msg/s |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for label, runs in rows.items():
            ceiling = med(r["ceiling"]["per_s"] for r in runs)
            phases = [("first commands", [r["opens"][0] for r in runs])]
            if all(len(r["opens"]) > 1 for r in runs):
                phases = [
                    ("first, below the cap", [r["opens"][0] for r in runs]),
                    ("first, past the cap", [r["opens"][1] for r in runs]),
                ]
            phases.append(("deposits (warm)", [r["deposits"] for r in runs]))
            for name, items in phases:
                ratio = med(item["per_s"] / r["ceiling"]["per_s"] for item, r in zip(items, runs, strict=True))
                print(
                    f"| {label} | {name} | {med(i['per_s'] for i in items):,.0f} "
                    f"| {med(i['p50_ms'] for i in items):.1f} | {med(i['p99_ms'] for i in items):.1f} "
                    f"| {ratio:.2f} | {ceiling:,.0f} |"
                )
        for runs in rows.values():
            if all(len(r["opens"]) > 1 for r in runs):
                ratio = med(r["opens"][1]["per_s"] / r["opens"][0]["per_s"] for r in runs)
                print(f"first commands past the cap / below it = {ratio:.2f}")
    elif not problems:
        problems.append("no complete run")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(rows))
        print(f"raw results: {args.json}")
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="The last line printed is `ratio: X.XX` (runtime commands/s ÷ ceiling "
        "messages/s); the exit status is 1 when a check failed. "
        "See docs/benchmarks.md.",
    )
    parser.add_argument(
        "--commands",
        type=int,
        default=20_000,
        help="N: deposits and withdrawals in the timed runtime loop "
        "(and publishes in the ceiling's; default %(default)s)",
    )
    parser.add_argument(
        "--keys", type=int, default=1_000, help="K: accounts the commands are spread over (default %(default)s)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=64, help="C: operations in flight in both loops (default %(default)s)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of both loops, alternating; the table shows medians (the machine is noisy; default %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="`esfsm run --workers`: runtime processes sharing out the keys (CPU counts them all; default %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=42, help="seed of the workload (which key, which command; default %(default)s)"
    )
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds to wait for the KV snapshots (default %(default)s)"
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=180.0,
        help="seconds to wait for the snapshot writer's backlog before the next loop (default %(default)s)",
    )
    parser.add_argument("--py-spy", metavar="OUT", help="record the runtime with py-spy (.svg, .json or .txt)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, stores)")
    parser.add_argument(
        "--scale",
        metavar="POINTS",
        help="scale mode: comma-separated numbers of entities, and `past` for more than the runtime's "
        "cache holds (e.g. 1000,100000,past); per point and run a fresh server and runtime, "
        "first commands and deposits timed separately (see docs/benchmarks.md)",
    )
    parser.add_argument(
        "--cache-entities",
        type=int,
        default=0,
        help="scale mode, point `past`: the cache cap passed as `esfsm run --cache-entities` "
        f"(if the runtime has it; otherwise past its {DEFAULT_CACHE:,})",
    )
    parser.add_argument(
        "--past",
        type=int,
        default=0,
        help="scale mode, point `past`: entities opened past the cap (default: half the cap)",
    )
    parser.add_argument("--json", metavar="OUT", help="scale mode: write every run's raw results to OUT")
    parser.add_argument(
        "--esfsm-path",
        metavar="DIR",
        help="run the runtime from this checkout (its PYTHONPATH), e.g. a baseline worktree",
    )
    parser.add_argument("--runtime-script", help=argparse.SUPPRESS)  # experiments: a script standing in for `-m esfsm`
    parser.add_argument("--client-mode", choices=["runtime", "ceiling"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--run", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--time-bound", type=float, default=300.0, help=argparse.SUPPRESS)
    parser.add_argument("--runtime-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--split", type=int, default=0, help=argparse.SUPPRESS)  # opens up to it: below the cap
    parser.add_argument("--warm", type=int, default=0, help=argparse.SUPPRESS)  # timed commands over the last N keys
    parser.add_argument("--drain-first", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.commands, args.keys, args.concurrency, args.repeat, args.workers) < 1:
        parser.error("--commands, --keys, --concurrency, --repeat and --workers must be at least 1")
    if args.settle < 0 or args.drain < 0:
        parser.error("--settle and --drain must not be negative")
    if min(args.cache_entities, args.past) < 0:
        parser.error("--cache-entities and --past must not be negative")
    if args.client_mode:
        return client_main(args)
    if args.runtime_script:  # the runtime runs in a temporary directory
        args.runtime_script = str(Path(args.runtime_script).resolve())
    if args.esfsm_path:  # the server helpers too come from that checkout
        sys.path.insert(0, str(Path(args.esfsm_path).resolve()))
    if args.scale:
        try:
            parse_points(args.scale)
        except ValueError as err:
            parser.error(f"--scale: {err}")
        return orchestrate_scale(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
