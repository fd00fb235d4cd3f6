"""What the server's per-subject index costs an OCC append: the runtime's append (expected
last subject sequence over the entity's wildcard, a message id) on a stream holding 1,000
or 100,000 subjects.

    python benchmarks/bench_subjects.py [--subjects 1000,100000] [--appends 20000] [--repeat 2]

Per size and run, a nats-server of its own (EmbeddedServer) and a stream with one message
on each of `subjects` entities (`<stream>.<key>.opened`); then `--appends` appends of
`<stream>.<key>.deposited` with `Nats-Expected-Last-Subject-Sequence` (the key's last
sequence), `Nats-Expected-Last-Subject-Sequence-Subject: <stream>.<key>.>` and a
`Nats-Msg-Id`, 64 in flight (one per key at a time: worker w appends to the keys i % 64 == w).
Prints appends/s, p50/p99 and the server's CPU per append (from /proc). See
docs/benchmarks.md ("Deposits' p99 at 100,000 entities").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

CONCURRENCY = 64


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(url: str, server_pid: int, subjects: int, appends: int) -> str:
    import nats
    from nats.js.api import StorageType, StreamConfig

    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=10)
        prefix = f"s{subjects}"
        await js.add_stream(
            StreamConfig(
                name=prefix.upper(),
                subjects=[f"{prefix}.>"],
                storage=StorageType.FILE,
                allow_direct=True,
                duplicate_window=120,
            )
        )
        keys = [f"k{i:06d}" for i in range(subjects)]
        last: dict[str, int] = {}
        limit = asyncio.Semaphore(256)

        async def seed(key: str) -> None:
            async with limit:
                last[key] = (await js.publish(f"{prefix}.{key}.opened", b'{"owner":"x"}')).seq

        await asyncio.gather(*(seed(key) for key in keys))
        rng = random.Random(1)
        owned = [keys[w::CONCURRENCY] for w in range(CONCURRENCY)]
        latencies: list[float] = []

        async def worker(w: int) -> None:
            for _ in range(appends // CONCURRENCY):
                key = rng.choice(owned[w])
                headers = {
                    "Nats-Expected-Last-Subject-Sequence": str(last[key]),
                    "Nats-Expected-Last-Subject-Sequence-Subject": f"{prefix}.{key}.>",
                    "Nats-Msg-Id": os.urandom(8).hex(),
                }
                started = time.perf_counter()
                ack = await js.publish(f"{prefix}.{key}.deposited", b'{"amount":1}', headers=headers)
                latencies.append(time.perf_counter() - started)
                last[key] = ack.seq

        cpu, started = cpu_seconds(server_pid), time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(min(CONCURRENCY, subjects))))
        elapsed, used = time.perf_counter() - started, cpu_seconds(server_pid) - cpu
        latencies.sort()
        p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
        return (
            f"subjects {subjects:>7,}: {len(latencies) / elapsed:8,.0f} appends/s "
            f"p50 {p50 * 1000:.1f} ms p99 {p99 * 1000:.1f} ms, "
            f"server {used / len(latencies) * 1e6:.0f} µs/append"
        )
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    from esfsm.runtime.server import EmbeddedServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", default="1000,100000", help="comma-separated sizes (default %(default)s)")
    parser.add_argument("--appends", type=int, default=20_000, help="timed appends per size (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of every size, alternating (default %(default)s)")
    args = parser.parse_args(argv)
    sizes = [int(part) for part in args.subjects.split(",") if part.strip()]
    for _ in range(args.repeat):
        for subjects in sizes:
            workdir = Path(tempfile.mkdtemp(prefix="esfsm-subjects-"))
            server = EmbeddedServer(workdir / "nats", port=0, host="127.0.0.1")
            try:
                server.start()
                assert server.process is not None
                print(asyncio.run(measure(server.url, server.process.pid, subjects, args.appends)), flush=True)
            finally:
                server.stop()
                shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
