"""`esfsm run`: the runtime for a set of compiled aggregates, start to drain.

Its lifecycle: connect (until stopped), prepare the streams, buckets and
consumers, open (join the queue groups, start the snapshot writers), serve
until a signal, drain, stop. The worker processes of `--workers N` are in
workers.py, the log lines in logs.py.

Every long-lived task runs in an `asyncio.TaskGroup`: `serve`'s (the workers'
watchers, a worker's watch on its parent) and the `Runtime`'s (its snapshot
writers and the definition comparison, under one supervising task). A task that
fails while serving stops the run with exit status 1, as a lost connection
does; stopping cancels whatever has not ended and waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cachetools import TTLCache
from nats.aio.client import Client

from esfsm.compiler import CompiledAggregate
from esfsm.contract import all_commands, info_subject
from esfsm.errors import EsfsmError
from esfsm.model import fingerprint
from esfsm.runtime import startup
from esfsm.runtime.answers import DEFAULT_WINDOW
from esfsm.runtime.connection import DEFAULT_STORE, ConnectOptions, connect, gather_answers, resolve_servers
from esfsm.runtime.logs import configure_logging, info, setup_logging
from esfsm.runtime.partition import PREFIX, Partition
from esfsm.runtime.projector import Projector
from esfsm.runtime.server import EmbeddedServer
from esfsm.runtime.service import AggregateService
from esfsm.runtime.store import AggregateStore
from esfsm.runtime.turns import DEFAULT_CAPACITY
from esfsm.runtime.workers import STOP_SIGNALS, WORKER_STOP_WAIT, Workers, watch_parent

__all__ = [
    "GC_THRESHOLDS",
    "STOP_SIGNALS",
    "WORKER_STOP_WAIT",
    "ConnectionLost",
    "RunSettings",
    "Runtime",
    "Workers",
    "configure_logging",
    "serve",
    "setup_logging",
    "tune_gc",
]

log = logging.getLogger("esfsm.run")

DISCOVERY_WAIT = 0.5  # seconds to collect the other runtimes' $SRV.INFO answers
STOP_WAIT = 5.0  # seconds the snapshot writers get to finish their batch before they are cancelled
RETRY_NOTE = 10.0  # seconds between warnings while the servers cannot be reached


class ConnectionLost(EsfsmError):
    """The connection closed under a running runtime, one of its workers exited, or one of its
    tasks failed (it exits 1 so that it can be restarted)."""


@dataclass
class Runtime:
    """Every aggregate's store, service and snapshot writer on one connection."""

    nc: Client
    aggregates: list[CompiledAggregate]
    domain: str | None = None
    test_clock: bool = False
    partition: Partition | None = None  # one of several workers (partition.py)
    on_failure: Callable[[BaseException], None] | None = None  # a task failed while serving (not when stopping)
    cache_entities: int = DEFAULT_CAPACITY  # entities kept warm per aggregate (turns.py)
    command_window: float = DEFAULT_WINDOW  # seconds an answer to a command id is kept (answers.py)
    services: dict[str, AggregateService] = field(default_factory=dict)
    projectors: list[Projector] = field(default_factory=list)
    _tasks: asyncio.Task[None] | None = None  # supervises the TaskGroup of the long-lived tasks
    _stopping: bool = False
    _ping: Any = None

    async def start(self) -> None:
        await self.prepare()
        await self.open()

    async def prepare(self) -> None:
        """Streams, buckets and consumers in place; with a partition, listening for the
        commands other workers pass on (and answering their pings). First, before anything is
        written, every definition is checked against what its stream holds (startup.py)."""
        checked = [await startup.check(self.nc, compiled, self.domain) for compiled in self.aggregates]
        for compiled, found in zip(self.aggregates, checked, strict=True):
            store = AggregateStore(self.nc, compiled, domain=self.domain, command_window=self.command_window)
            await store.ensure()
            await startup.registered(store.catalog, found)
            service = AggregateService(self.nc, compiled, store, self.test_clock, self.partition, self.cache_entities)
            await service.listen_passed()
            self.services[compiled.name] = service
        if self.partition is not None:
            self._ping = await self.partition.listen(self.nc)

    async def open(self, stop: asyncio.Event | None = None) -> bool:
        """Join the queue groups (once every other worker listens) and start the snapshot
        writers; False if stop was set while waiting for the other workers."""
        if self._ping is not None:
            assert self.partition is not None
            if not await self.partition.wait_for_peers(self.nc, stop=stop):
                return False
        for service in self.services.values():
            compiled = service.compiled
            await service.start()
            self.projectors.append(Projector(service.store, service.cached, self.partition))
            names = compiled.model.nats
            info(
                "serving aggregate",
                aggregate=compiled.name,
                service=compiled.model.service_name,
                commands=all_commands(names.commands),
                stream=names.stream,
                bucket=names.bucket,
            )
        self._tasks = asyncio.create_task(self._supervise(), name="runtime")
        self._tasks.add_done_callback(self._ended)  # retrieves its outcome, whoever awaits it
        return True

    async def _supervise(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            for projector in self.projectors:
                tasks.create_task(projector.run(), name=f"projector-{projector.store.compiled.name}")
            tasks.create_task(self._compare_definitions(), name="compare-definitions")

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The long-lived tasks are over: normally on stop(); on an error, the others were
        cancelled, so the runtime writes no snapshots any more: say so, and stop it."""
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        assert error is not None
        errors = error.exceptions if isinstance(error, BaseExceptionGroup) else (error,)
        what = "; ".join(f"{type(e).__name__}: {e}" for e in errors)
        if self._stopping:
            log.warning("a task of the runtime failed while stopping: %s", what)
            return
        log.error("a task of the runtime failed: %s; stopping", what, exc_info=errors[0])
        if self.on_failure is not None:
            self.on_failure(errors[0])

    async def _compare_definitions(self, wait: float = DISCOVERY_WAIT) -> None:
        """Warn when another runtime serves one of these aggregates from a different definition:
        the two would decide its commands differently (expected only during a rolling upgrade)."""
        ours = {name: fingerprint(service.compiled.model) for name, service in self.services.items()}
        try:  # on the subject every client may ask on (docs/security.md)
            answers = await gather_answers(self.nc, [info_subject(name) for name in ours], wait)
        except Exception as err:  # noqa: BLE001 - a check for the operator's sake: never stops the runtime
            log.debug("comparing definitions with other runtimes failed: %s", type(err).__name__)
            return
        warned: set[str] = set()
        for answer in answers:
            try:
                info_ = json.loads(answer)
                meta = info_.get("metadata") or {}
                name, theirs = meta.get("aggregate"), meta.get("definition")
            except (ValueError, AttributeError):
                continue
            if name in ours and theirs and theirs != ours[name] and name not in warned:
                warned.add(name)
                log.warning(
                    "another runtime serves aggregate %r from a different definition (its fingerprint "
                    "%s, ours %s): commands will be decided by whichever of the two gets them; expected "
                    "only during a rolling upgrade",
                    name,
                    theirs,
                    ours[name],
                    extra={"fields": {"aggregate": name, "other": info_.get("id", "?")}},
                )

    async def stop(self, wait: float = STOP_WAIT) -> None:
        """Stop taking commands, finish those in flight, then stop the snapshot writers (cancelled
        if they have not finished within wait seconds) and wait until every task has ended."""
        self._stopping = True
        for service in self.services.values():
            await service.stop()
        if self._ping is not None:
            try:
                await self._ping.unsubscribe()
            except Exception as err:  # noqa: BLE001 - the connection is gone: so is the subscription
                log.debug("unsubscribing the worker ping failed: %s", type(err).__name__)
        for projector in self.projectors:
            projector.stop()
        if self._tasks is not None and not (await asyncio.wait({self._tasks}, timeout=wait))[0]:
            self._tasks.cancel()  # the TaskGroup cancels its tasks and waits for them
            await asyncio.wait({self._tasks})


@dataclass
class RunSettings:
    servers: tuple[str, ...] = ()
    options: ConnectOptions = field(default_factory=ConnectOptions)
    store_dir: Path = DEFAULT_STORE
    port: int = 0  # embedded server: 0 = 4222 or the next free port
    workers: int = 1  # processes serving the aggregates, keys shared out among them (partition.py)
    worker_args: tuple[str, ...] = ()  # the `esfsm run` arguments a worker gets besides --server and --worker
    partition: Partition | None = None  # set in a worker that `esfsm run --workers N` started
    cache_entities: int = DEFAULT_CAPACITY  # entities kept warm per aggregate and process
    command_window: float = DEFAULT_WINDOW  # seconds an answer to a command id is kept


GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """Collect garbage less often while serving. What start-up loaded (definitions, compiled
    programs, modules) is frozen out of the collector, and the youngest generation is
    collected every 50,000 allocations instead of 700: a command allocates a few hundred
    objects, and each collection walked the warm entities again. Measured on
    bench_runtime: ~10 % less CPU per command and half the p99 latency."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(
    aggregates: Iterable[CompiledAggregate], settings: RunSettings, stop: asyncio.Event | None = None
) -> None:
    """Run until SIGINT/SIGTERM/SIGHUP (or stop is set), then drain and return."""
    aggregates = list(aggregates)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    embedded: EmbeddedServer | None = None
    servers = list(settings.servers) or resolve_servers((), Path("/nonexistent"))
    if not servers:
        embedded = EmbeddedServer(settings.store_dir, port=settings.port)
        embedded.start()  # on this thread, which outlives it (see EmbeddedServer.start); nothing else runs yet
        servers = [embedded.url]
        info("started embedded nats-server", url=embedded.url, store=str(settings.store_dir.resolve()))
    lost: list[str] = []
    try:
        async with task_group() as tasks:
            await _serve(aggregates, settings, servers, stop, lost, tasks)
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
            info("stopped embedded nats-server")
    info("stopped")
    if lost:
        raise ConnectionLost("; ".join(lost))


async def _serve(
    aggregates: list[CompiledAggregate],
    settings: RunSettings,
    servers: list[str],
    stop: asyncio.Event,
    lost: list[str],
    tasks: asyncio.TaskGroup,
) -> None:
    """Connect, serve until stop is set, drain; what ended the run unasked goes in lost."""
    watcher = _ConnectionWatcher(servers, stop, lost)
    nc = await _until_stopped(
        connect(
            servers,
            settings.options,
            error_cb=watcher.trouble,
            disconnected_cb=_log_async("disconnected from NATS", unless=stop),
            reconnected_cb=_log_async("reconnected to NATS"),
            closed_cb=watcher.closed,
        ),
        stop,
    )
    if nc is None:
        info("stopped before connecting")
        return
    watcher.connected = True
    info("connected", url=str(nc.connected_url.geturl() if nc.connected_url else servers[0]))

    def failed(error: BaseException) -> None:
        lost.append(f"a task of the runtime failed ({type(error).__name__})")
        stop.set()

    partition = settings.partition
    if settings.workers > 1:
        partition = Partition(secrets.token_hex(4), 0, settings.workers)
    runtime = Runtime(
        nc,
        aggregates,
        settings.options.js_domain,
        partition=partition,
        on_failure=failed,
        cache_entities=settings.cache_entities,
        command_window=settings.command_window,
    )
    workers: Workers | None = None
    try:
        await runtime.prepare()
        if settings.workers > 1:
            assert partition is not None
            cores = os.cpu_count() or 1
            if settings.workers > cores:
                log.warning(
                    "%d workers on %d cores: more workers than cores costs CPU (a passed-on command "
                    "is one more message) and gains nothing",
                    settings.workers,
                    cores,
                )
            workers = Workers(partition, settings.options, settings.worker_args, servers, stop, lost)
            await workers.start(tasks)
        elif settings.partition is not None:
            tasks.create_task(watch_parent(stop, lost), name="watch-parent")
        if await runtime.open(stop):
            tune_gc()
            info(
                "ready",
                aggregates=",".join(a.name for a in aggregates),
                **({"workers": settings.workers} if workers else {}),
            )
        await stop.wait()
        info("draining")
    finally:
        stop.set()  # stopping, whatever the cause: the connection closing below is no news; ends watch_parent
        if workers is not None:
            workers.terminate()  # they drain alongside this one
        await runtime.stop()
        await _close(nc)
        if workers is not None:
            await workers.wait()  # and with them, their watchers


class _ConnectionWatcher:
    """nats-py's callbacks of the runtime's connection: a closed connection, a missing permission
    the workers need, or an error while (re)connecting (one line per RETRY_NOTE seconds each)."""

    def __init__(self, servers: list[str], stop: asyncio.Event, lost: list[str]) -> None:
        self.servers, self.stop, self.lost = servers, stop, lost
        self.connected = False
        # the errors warned about in the last RETRY_NOTE seconds (a retry comes every 0.5 s)
        self.noted: TTLCache[str, bool] = TTLCache(maxsize=100, ttl=RETRY_NOTE, timer=asyncio.get_running_loop().time)

    async def closed(self) -> None:
        if not self.stop.is_set():  # closed by the server or after giving up: exit so a supervisor restarts us
            log.error("the NATS connection was closed; stopping")
            self.lost.append("the NATS connection was closed while serving")
            self.stop.set()

    async def trouble(self, err: Exception) -> None:  # nats-py's error callback: while connecting, and later
        text = f"{type(err).__name__}: {err}"
        if "permissions violation" in text and f"{PREFIX.lower()}." in text.lower() and not self.stop.is_set():
            log.error(
                "the NATS user may not use %s.>, which the workers of --workers pass commands on "
                "(see docs/security.md): %s; stopping",
                PREFIX,
                err,
            )
            self.lost.append(f"no permission on {PREFIX}.> for the workers")
            self.stop.set()
            return
        if "permissions violation" in text and info_subject("").lower() in text.lower():
            info(
                f"no permission to ask the other runtimes for their definitions (publish "
                f"{info_subject('<name>')}, docs/security.md); not comparing them"
            )
            return
        if text in self.noted:
            return
        self.noted[text] = True
        log.warning("NATS: %s%s", text, "" if self.connected else f"; still trying {', '.join(self.servers)}")


@contextlib.asynccontextmanager
async def task_group() -> AsyncIterator[asyncio.TaskGroup]:
    """An asyncio.TaskGroup whose one error (of its body or of a task) comes out as itself, not
    wrapped in an ExceptionGroup, so that callers catch EsfsmError as before."""
    try:
        async with asyncio.TaskGroup() as tasks:
            yield tasks
    except BaseExceptionGroup as errors:
        if len(errors.exceptions) == 1:
            raise errors.exceptions[0] from None
        raise


async def _until_stopped(connecting: Coroutine[Any, Any, Client], stop: asyncio.Event) -> Client | None:
    """The connection, or None if stop was set first (the attempt is then given up).
    The runtime keeps trying to connect until it is stopped, so it may start before
    its servers; SIGINT/SIGTERM still end it at once."""
    async with task_group() as tasks:
        attempt = tasks.create_task(connecting, name="connect")
        stopped = tasks.create_task(stop.wait(), name="stopped")
        await asyncio.wait({attempt, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        attempt.cancel()  # nothing if it is done
    return None if attempt.cancelled() else attempt.result()


async def _close(nc: Client) -> None:
    """Drain the connection (flushes the last replies); if it cannot drain, close it."""
    try:
        await nc.drain()
    except Exception as err:  # noqa: BLE001 - reconnecting or already closed: nothing is left to flush
        log.warning("could not drain the connection (%s: %s); closing it", type(err).__name__, err)
        try:
            await nc.close()
        except Exception as closing:  # noqa: BLE001 - the server went away meanwhile: the socket is gone already
            log.debug("closing the connection failed: %s: %s", type(closing).__name__, closing)


def _log_async(message: str, unless: asyncio.Event | None = None):  # type: ignore[no-untyped-def]
    """A nats-py callback that logs a warning; only at debug level once unless is set (the
    connection closing at the end of a drain is no news)."""

    async def callback() -> None:
        if unless is not None and unless.is_set():
            log.debug(message)
        else:
            log.warning(message)

    return callback
