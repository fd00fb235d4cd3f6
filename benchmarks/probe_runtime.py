"""Stands in for `python -m esfsm` and records where the runtime's event loop stalls.

    python benchmarks/bench_runtime.py --runtime-script benchmarks/probe_runtime.py ...
    ESFSM_PROBE_OUT=/tmp/probe.json (where the report goes; the default is probe.json in the
    runtime's working directory, kept with --keep)

It runs the ordinary `esfsm` command line with three probes added, and writes a JSON report
when the runtime exits:

* stalls: a task on the runtime's event loop wakes every 2 ms; each wake-up later than 20 ms
  is a stall (monotonic time it began, its length, the CPU time the loop's thread used
  meanwhile: on a busy machine a stall can be mostly waiting for a core);
* stacks: a thread looks at the loop every 5 ms; while the loop is more than 20 ms late and
  its thread used most of those 5 ms of CPU, it records the loop's stack with the time (it
  cannot while the garbage collector runs: that holds the GIL, which the gc probe covers);
* gc: every collection of generation 1 or 2, and of generation 0 when it took over 2 ms
  (monotonic start, generation, length, objects collected);
* project: each snapshot cycle of the projector (start, length, events, distinct keys).

The times are time.monotonic(), the same clock the benchmark's client reads (Linux), so the
report can be lined up with the client's timed loop. Nothing here changes what the runtime
does; the probes cost it a few per cent of CPU.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import sys
import threading
import time
import traceback

BEAT = 0.002
STALL = 0.020
LOOK = 0.005
LATE = 0.020

stalls: list[tuple[float, float, float]] = []
collections_seen: list[tuple[float, int, float, int]] = []
cycles: list[tuple[float, float, int, int]] = []
stacks: list[tuple[float, str]] = []
_beat = [time.monotonic()]
_gc_start: dict[int, float] = {}


def _on_gc(phase: str, info: dict[str, int]) -> None:
    gen = info["generation"]
    if phase == "start":
        _gc_start[gen] = time.monotonic()
        return
    began = _gc_start.pop(gen, None)
    if began is None:
        return
    took = time.monotonic() - began
    if gen > 0 or took > 0.002:
        collections_seen.append((began, gen, took, info.get("collected", 0)))


def _watch(main_id: int) -> None:
    clock = time.pthread_getcpuclockid(main_id)
    cpu = time.clock_gettime(clock)
    while True:
        time.sleep(LOOK)
        now_cpu = time.clock_gettime(clock)
        busy, cpu = now_cpu - cpu > LOOK / 2, now_cpu  # the loop's thread ran most of the time: its own work
        now = time.monotonic()
        if busy and now - _beat[0] > LATE:
            frame = sys._current_frames().get(main_id)
            if frame is None:
                continue
            lines = [
                f"{os.path.basename(f.filename)}:{f.name}:{f.lineno}" for f in traceback.extract_stack(frame)[-14:]
            ]
            stacks.append((now, " < ".join(reversed(lines))))


async def _heartbeat() -> None:
    import asyncio

    while True:
        before, cpu = time.monotonic(), time.thread_time()
        _beat[0] = before
        await asyncio.sleep(BEAT)
        late = time.monotonic() - before - BEAT
        if late > STALL:  # with the CPU time the loop's thread used meanwhile (less: it waited for a core)
            stalls.append((before, late, time.thread_time() - cpu))


def _report() -> None:
    out = os.environ.get("ESFSM_PROBE_OUT", "probe.json")
    with open(out, "w") as handle:
        json.dump(
            {
                "stalls": stalls,
                "gc": collections_seen,
                "cycles": cycles,
                "stacks": stacks,
                "gc_threshold": gc.get_threshold(),
                "gc_count": gc.get_count(),
                "objects": len(gc.get_objects()),
            },
            handle,
        )


def install() -> None:
    from esfsm.runtime import projector, runner

    serve = runner.serve

    async def probed_serve(*args: object, **kwargs: object) -> object:
        import asyncio

        task = asyncio.get_running_loop().create_task(_heartbeat())
        try:
            return await serve(*args, **kwargs)
        finally:
            task.cancel()

    runner.serve = probed_serve  # type: ignore[assignment]
    project = projector.Projector.project

    async def probed_project(self: object, batch: list[tuple[str | None, int | None, str]]) -> None:
        began = time.monotonic()
        try:
            await project(self, batch)  # type: ignore[arg-type]
        finally:
            cycles.append((began, time.monotonic() - began, len(batch), len({item[0] for item in batch})))

    projector.Projector.project = probed_project  # type: ignore[method-assign]
    gc.callbacks.append(_on_gc)
    threading.Thread(target=_watch, args=(threading.get_ident(),), daemon=True).start()
    atexit.register(_report)


if __name__ == "__main__":
    install()
    from esfsm.cli import main

    sys.exit(main())
