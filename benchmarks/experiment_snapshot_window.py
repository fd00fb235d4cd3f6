"""An experiment, not a fix: the runtime with the snapshot writer's warm writes sent in windows.

    python benchmarks/bench_runtime.py --scale 1000,100000 \
        --runtime-script benchmarks/experiment_snapshot_window.py
    ESFSM_SNAPSHOT_WINDOW=128 (writes in flight at once; 0: as the runtime does, all at once)

Stands in for `python -m esfsm` like benchmarks/probe_runtime.py (whose probes it installs
too). AggregateStore.write_over sends every warm snapshot write of a cycle at once: one
burst of as many KV writes as the cycle has distinct entities, which the server works
through ahead of the commands sent after it. Here the same writes go WINDOW at a time, each
window awaited before the next, so commands interleave with them. docs/benchmarks.md
("Deposits' p99 at 100,000 entities") has what it measured.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import probe_runtime

WINDOW = int(os.environ.get("ESFSM_SNAPSHOT_WINDOW", "128"))


def install() -> None:
    from esfsm.runtime.store import AggregateStore

    write_over = AggregateStore.write_over

    async def windowed(self: AggregateStore, writes: list) -> list:  # type: ignore[type-arg]
        if WINDOW <= 0 or len(writes) <= WINDOW:
            return await write_over(self, writes)
        results: list = []  # type: ignore[type-arg]
        for start in range(0, len(writes), WINDOW):
            results.extend(await write_over(self, writes[start : start + WINDOW]))
        return results

    AggregateStore.write_over = windowed  # type: ignore[method-assign]


if __name__ == "__main__":
    probe_runtime.install()
    install()
    from esfsm.cli import main

    sys.exit(main())
