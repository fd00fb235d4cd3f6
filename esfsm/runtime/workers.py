"""The processes of `esfsm run --workers N`: the first starts and watches the others.

Worker 0 is the `esfsm run` that was started; it starts workers 1..N-1 as
`esfsm run --worker GROUP:I/N` (partition.py), each on its own connection to the
same servers, and watches them: one that exits while serving stops the whole
run (exit status 1), as a lost connection does, so that a supervisor restarts
it whole. A worker in turn watches for its parent to go away.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys

from esfsm.runtime.connection import ConnectOptions
from esfsm.runtime.logs import info
from esfsm.runtime.partition import Partition
from esfsm.runtime.server import die_with_parent

log = logging.getLogger("esfsm.run")

# SIGHUP: the terminal `esfsm run` was started from was closed; drain and stop as for the others
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
WORKER_STOP_WAIT = 45.0  # seconds a worker gets to drain after SIGTERM (its commands in flight wait up to 30)
PARENT_CHECK = 1.0  # seconds between a worker's looks at its parent


class Workers:
    """The other worker processes of `esfsm run --workers N`: `esfsm run --worker GROUP:I/N`,
    each on its own connection to the same servers. One that exits while serving stops the
    whole run (exit status 1), as a lost connection does: a supervisor restarts it whole."""

    def __init__(
        self,
        partition: Partition,
        options: ConnectOptions,
        worker_args: tuple[str, ...],
        servers: list[str],
        stop: asyncio.Event,
        lost: list[str],
    ) -> None:
        self.partition, self.options, self.worker_args = partition, options, worker_args
        self.servers, self.stop, self.lost = servers, stop, lost
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self._failed: set[int] = set()  # reported in lost already

    def command(self, index: int) -> list[str]:
        """The command line of worker index."""
        args, _ = self.options.for_worker()
        command = [
            sys.executable,
            "-m",
            "esfsm",
            "run",
            *self.worker_args,
            *args,
            "--worker",
            str(dataclasses.replace(self.partition, index=index)),
        ]
        for server in self.servers:
            command += ["--server", server]
        return command

    async def start(self, tasks: asyncio.TaskGroup) -> None:
        """Start workers 1..N-1, each watched by a task of tasks (which ends when it exits)."""
        _, env = self.options.for_worker()
        for index in range(1, self.partition.count):
            # A session of its own: a terminal's Ctrl-C or hang-up reaches only this process, which
            # drains and then stops the workers with SIGTERM (a worker still starting would die of it).
            process = await asyncio.create_subprocess_exec(
                *self.command(index),
                env={**os.environ, **env},
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
            self.processes[index] = process
            info("started worker process", number=index, pid=process.pid)
            tasks.create_task(self._watch(index, process), name=f"worker-{index}")

    async def _watch(self, index: int, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if self.stop.is_set():
            return
        if code == 0:  # it drained on a signal sent to it alone
            info("worker stopped; stopping", number=index)
        else:
            log.error("worker %d exited with status %s while serving; stopping", index, code)
            self._failed.add(index)
            self.lost.append(f"worker {index} exited with status {code}")
        self.stop.set()

    def terminate(self) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                try:
                    process.terminate()
                except ProcessLookupError:
                    pass

    async def wait(self) -> None:
        """Until every worker has exited (killed after WORKER_STOP_WAIT); their watchers end with them."""
        for index, process in self.processes.items():
            try:
                code = await asyncio.wait_for(process.wait(), WORKER_STOP_WAIT)
            except TimeoutError:
                log.error("worker %d did not stop within %.0f s; killing it", index, WORKER_STOP_WAIT)
                process.kill()
                code = await process.wait()
            # -SIGINT/-SIGTERM/-SIGHUP: the signal (Ctrl-C to the group, or ours) came before the worker
            # set its handlers up, so it had not served yet: stopped, not failed
            if code != 0 and -code not in STOP_SIGNALS and index not in self._failed:
                self.lost.append(f"worker {index} exited with status {code}")


async def watch_parent(stop: asyncio.Event, lost: list[str], every: float = PARENT_CHECK) -> None:
    """A worker stops when the `esfsm run` that started it is gone; this ends as soon as stop is set."""
    parent = os.getppid()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every)
        except TimeoutError:
            if os.getppid() != parent:
                log.error("the esfsm run that started this worker is gone; stopping")
                lost.append("the parent process is gone")
                stop.set()
