"""`esfsm run`: the runtime for a set of compiled aggregates, start to drain."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import gc
import json
import logging
import os
import secrets
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from esfsm.compiler import CompiledAggregate
from esfsm.errors import EsfsmError
from esfsm.model import fingerprint
from esfsm.runtime.connection import DEFAULT_STORE, ConnectOptions, connect, gather_answers, resolve_servers
from esfsm.runtime.partition import PREFIX, Partition
from esfsm.runtime.projector import Projector
from esfsm.runtime.server import EmbeddedServer, die_with_parent
from esfsm.runtime.service import AggregateService
from esfsm.runtime.store import AggregateStore

log = logging.getLogger("esfsm.run")

DISCOVERY_WAIT = 0.5  # seconds to collect the other runtimes' $SRV.INFO answers


class LogfmtFormatter(logging.Formatter):
    """One structured line per record: ts=… level=… logger=… [worker=…] msg="…" key=value…"""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds")
        parts = [f"ts={ts.replace('+00:00', 'Z')}", f"level={record.levelname.lower()}", f"logger={record.name}"]
        if self.worker is not None:
            parts.append(f"worker={self.worker}")
        parts.append(f"msg={_quote(record.getMessage())}")
        for key, value in getattr(record, "fields", {}).items():
            parts.append(f"{key}={_quote(str(value).lower() if isinstance(value, bool) else str(value))}")
        if record.exc_info:
            parts.append(f"error={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def _quote(text: str) -> str:
    if text and all(c.isalnum() or c in "-_./:@" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def setup_logging(level: str = "info", worker: int | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter(worker))
    root = logging.getLogger("esfsm")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def info(message: str, **fields: object) -> None:
    log.info(message, extra={"fields": fields})


@dataclass
class Runtime:
    """Every aggregate's store, service and snapshot writer on one connection."""

    nc: Client
    aggregates: list[CompiledAggregate]
    domain: str | None = None
    test_clock: bool = False
    partition: Partition | None = None  # one of several workers (partition.py)
    services: dict[str, AggregateService] = field(default_factory=dict)
    projectors: list[Projector] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _ping: Any = None

    async def start(self) -> None:
        await self.prepare()
        await self.open()

    async def prepare(self) -> None:
        """Streams, buckets and consumers in place; with a partition, listening for the
        commands other workers pass on (and answering their pings)."""
        for compiled in self.aggregates:
            store = AggregateStore(self.nc, compiled, domain=self.domain)
            await store.ensure()
            service = AggregateService(self.nc, compiled, store, self.test_clock, self.partition)
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
            projector = Projector(service.store, service.cached, self.partition)
            self._tasks.append(asyncio.create_task(projector.run(), name=f"projector-{compiled.name}"))
            self.projectors.append(projector)
            names = compiled.model.nats
            info("serving aggregate", aggregate=compiled.name, service=compiled.model.service_name,
                 commands=f"{names.commands}.>", stream=names.stream, bucket=names.bucket)
        self._tasks.append(asyncio.create_task(self._compare_definitions(), name="compare-definitions"))
        return True

    async def _compare_definitions(self, wait: float = DISCOVERY_WAIT) -> None:
        """Warn when another runtime serves one of these aggregates from a different definition:
        the two would decide its commands differently (expected only during a rolling upgrade)."""
        ours = {name: fingerprint(service.compiled.model) for name, service in self.services.items()}
        try:  # on the subject every client may ask on (docs/security.md)
            answers = await gather_answers(self.nc, [f"$SRV.INFO.aggregate-{name}" for name in ours], wait)
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
                log.warning("another runtime serves aggregate %r from a different definition (its fingerprint "
                            "%s, ours %s): commands will be decided by whichever of the two gets them; expected "
                            "only during a rolling upgrade", name, theirs, ours[name],
                            extra={"fields": {"aggregate": name, "other": info_.get("id", "?")}})

    async def stop(self) -> None:
        """Stop taking commands, finish those in flight, then stop the snapshot writers."""
        for service in self.services.values():
            await service.stop()
        if self._ping is not None:
            try:
                await self._ping.unsubscribe()
            except Exception as err:  # noqa: BLE001 - the connection is gone: so is the subscription
                log.debug("unsubscribing the worker ping failed: %s", type(err).__name__)
        for projector in self.projectors:
            projector.stop()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        for task in self._tasks:
            task.cancel()


@dataclass
class RunSettings:
    servers: tuple[str, ...] = ()
    options: ConnectOptions = field(default_factory=ConnectOptions)
    store_dir: Path = DEFAULT_STORE
    port: int = 0  # embedded server: 0 = 4222 or the next free port
    workers: int = 1  # processes serving the aggregates, keys shared out among them (partition.py)
    worker_args: tuple[str, ...] = ()  # the `esfsm run` arguments a worker gets besides --server and --worker
    partition: Partition | None = None  # set in a worker that `esfsm run --workers N` started


GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """Collect garbage less often while serving. What start-up loaded (definitions, compiled
    programs, modules) is frozen out of the collector, and the youngest generation is
    collected every 50,000 allocations instead of 700: a command allocates a few hundred
    objects, and each collection walked the warm entities again. Measured on
    bench_runtime: ~10 % less CPU per command and half the p99 latency."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


# SIGHUP: the terminal `esfsm run` was started from was closed; drain and stop as for the others
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


async def serve(aggregates: Iterable[CompiledAggregate], settings: RunSettings,
                stop: asyncio.Event | None = None) -> None:
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
    workers: Workers | None = None
    try:
        async def closed() -> None:
            if not stop.is_set():  # closed by the server or after giving up: exit so a supervisor restarts us
                log.error("the NATS connection was closed; stopping")
                lost.append("the NATS connection was closed while serving")
                stop.set()

        noted: dict[str, float] = {}

        async def trouble(err: Exception) -> None:  # nats-py's error callback: while connecting, and later
            text = f"{type(err).__name__}: {err}"
            if "permissions violation" in text and f"{PREFIX.lower()}." in text.lower() and not stop.is_set():
                log.error("the NATS user may not use %s.>, which the workers of --workers pass commands on "
                          "(see docs/security.md): %s; stopping", PREFIX, err)
                lost.append(f"no permission on {PREFIX}.> for the workers")
                stop.set()
                return
            if "permissions violation" in text and "$srv.info.aggregate-" in text.lower():
                info("no permission to ask the other runtimes for their definitions (publish "
                     "$SRV.INFO.aggregate-<name>, docs/security.md); not comparing them")
                return
            now = loop.time()
            if now - noted.get(text, -RETRY_NOTE) < RETRY_NOTE:
                return  # the same error again (a retry every 0.5 s): one line per RETRY_NOTE seconds
            if len(noted) > 100:
                noted.clear()
            noted[text] = now
            log.warning("NATS: %s%s", text, "" if connected else f"; still trying {', '.join(servers)}")

        connected = False
        nc = await _until_stopped(connect(servers, settings.options, error_cb=trouble,
                                          disconnected_cb=_log_async("disconnected from NATS", unless=stop),
                                          reconnected_cb=_log_async("reconnected to NATS"),
                                          closed_cb=closed), stop)
        if nc is None:
            info("stopped before connecting")
            return
        connected = True
        info("connected", url=str(nc.connected_url.geturl() if nc.connected_url else servers[0]))
        partition = settings.partition
        if settings.workers > 1:
            partition = Partition(secrets.token_hex(4), 0, settings.workers)
        runtime = Runtime(nc, aggregates, settings.options.js_domain, partition=partition)
        watch: asyncio.Task[None] | None = None
        try:
            await runtime.prepare()
            if settings.workers > 1:
                assert partition is not None
                cores = os.cpu_count() or 1
                if settings.workers > cores:
                    log.warning("%d workers on %d cores: more workers than cores costs CPU (a passed-on command "
                                "is one more message) and gains nothing", settings.workers, cores)
                workers = Workers(partition, settings, servers, stop, lost)
                await workers.start()
            elif settings.partition is not None:
                watch = asyncio.create_task(_watch_parent(stop, lost))
            if await runtime.open(stop):
                tune_gc()
                info("ready", aggregates=",".join(a.name for a in aggregates),
                     **({"workers": settings.workers} if workers else {}))
            await stop.wait()
            info("draining")
        finally:
            stop.set()  # stopping, whatever the cause: the connection closing below is no news
            if workers is not None:
                workers.terminate()  # they drain alongside this one
            if watch is not None:
                watch.cancel()
            await runtime.stop()
            await _close(nc)
            if workers is not None:
                await workers.wait()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
            info("stopped embedded nats-server")
    info("stopped")
    if lost:
        raise ConnectionLost("; ".join(lost))


WORKER_STOP_WAIT = 45.0  # seconds a worker gets to drain after SIGTERM (its commands in flight wait up to 30)


class Workers:
    """The other worker processes of `esfsm run --workers N`: `esfsm run --worker GROUP:I/N`,
    each on its own connection to the same servers. One that exits while serving stops the
    whole run (exit status 1), as a lost connection does: a supervisor restarts it whole."""

    def __init__(self, partition: Partition, settings: RunSettings, servers: list[str], stop: asyncio.Event,
                 lost: list[str]) -> None:
        self.partition, self.settings, self.servers, self.stop, self.lost = partition, settings, servers, stop, lost
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self._failed: set[int] = set()  # reported in lost already
        self._watchers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        args, env = self.settings.options.for_worker()
        for index in range(1, self.partition.count):
            command = [sys.executable, "-m", "esfsm", "run", *self.settings.worker_args, *args,
                       "--worker", str(dataclasses.replace(self.partition, index=index))]
            for server in self.servers:
                command += ["--server", server]
            # A session of its own: a terminal's Ctrl-C or hang-up reaches only this process, which
            # drains and then stops the workers with SIGTERM (a worker still starting would die of it).
            process = await asyncio.create_subprocess_exec(*command, env={**os.environ, **env},
                                                           stdin=asyncio.subprocess.DEVNULL,
                                                           start_new_session=True, preexec_fn=die_with_parent)
            self.processes[index] = process
            info("started worker process", number=index, pid=process.pid)
            self._watchers.append(asyncio.create_task(self._watch(index, process)))

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
        for watcher in self._watchers:
            watcher.cancel()


async def _watch_parent(stop: asyncio.Event, lost: list[str]) -> None:
    """A worker stops when the `esfsm run` that started it is gone."""
    parent = os.getppid()
    while not stop.is_set():
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            log.error("the esfsm run that started this worker is gone; stopping")
            lost.append("the parent process is gone")
            stop.set()


RETRY_NOTE = 10.0  # seconds between warnings while the servers cannot be reached


async def _until_stopped(connecting: Any, stop: asyncio.Event) -> Client | None:
    """The connection, or None if stop was set first (the attempt is then given up).
    The runtime keeps trying to connect until it is stopped, so it may start before
    its servers; SIGINT/SIGTERM still end it at once."""
    attempt = asyncio.ensure_future(connecting)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({attempt, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if attempt.done():
        return attempt.result()  # type: ignore[no-any-return]
    attempt.cancel()
    try:
        await attempt
    except asyncio.CancelledError:
        pass
    return None


async def _close(nc: Client) -> None:
    """Drain the connection (flushes the last replies); if it cannot drain, close it."""
    try:
        await nc.drain()
    except Exception as err:  # reconnecting or already closed: nothing is left to flush
        log.warning("could not drain the connection (%s: %s); closing it", type(err).__name__, err)
        try:
            await nc.close()
        except Exception as closing:  # noqa: BLE001 - the server went away meanwhile: the socket is gone already
            log.debug("closing the connection failed: %s: %s", type(closing).__name__, closing)


class ConnectionLost(EsfsmError):
    """The connection closed under a running runtime, or one of its workers exited (it exits 1
    so that it can be restarted)."""


def _log_async(message: str, unless: asyncio.Event | None = None):  # type: ignore[no-untyped-def]
    """A nats-py callback that logs a warning; only at debug level once unless is set (the
    connection closing at the end of a drain is no news)."""
    async def callback() -> None:
        if unless is not None and unless.is_set():
            log.debug(message)
        else:
            log.warning(message)

    return callback
