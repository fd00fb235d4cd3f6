"""`esfsm run`: the runtime for a set of compiled aggregates, start to drain."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import logging
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client

from esfsm.compiler import CompiledAggregate
from esfsm.errors import EsfsmError
from esfsm.runtime.connection import DEFAULT_STORE, ConnectOptions, connect, resolve_servers
from esfsm.runtime.projector import Projector
from esfsm.runtime.server import EmbeddedServer
from esfsm.runtime.service import AggregateService
from esfsm.runtime.store import AggregateStore

log = logging.getLogger("esfsm.run")


class LogfmtFormatter(logging.Formatter):
    """One structured line per record: ts=… level=… logger=… msg="…" key=value…"""

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds")
        parts = [f"ts={ts.replace('+00:00', 'Z')}", f"level={record.levelname.lower()}", f"logger={record.name}",
                 f"msg={_quote(record.getMessage())}"]
        for key, value in getattr(record, "fields", {}).items():
            parts.append(f"{key}={_quote(str(value))}")
        if record.exc_info:
            parts.append(f"error={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def _quote(text: str) -> str:
    if text and all(c.isalnum() or c in "-_./:@" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
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
    services: dict[str, AggregateService] = field(default_factory=dict)
    projectors: list[Projector] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        for compiled in self.aggregates:
            store = AggregateStore(self.nc, compiled, domain=self.domain)
            await store.ensure()
            service = AggregateService(self.nc, compiled, store, self.test_clock)
            await service.start()
            projector = Projector(store, service.cached)
            self._tasks.append(asyncio.create_task(projector.run(), name=f"projector-{compiled.name}"))
            self.services[compiled.name] = service
            self.projectors.append(projector)
            names = compiled.model.nats
            info("serving aggregate", aggregate=compiled.name, service=compiled.model.service_name,
                 commands=f"{names.commands}.>", stream=names.stream, bucket=names.bucket)

    async def stop(self) -> None:
        """Stop taking commands, finish those in flight, then stop the snapshot writers."""
        for service in self.services.values():
            await service.stop()
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


GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """Collect garbage less often while serving. What start-up loaded (definitions, compiled
    programs, modules) is frozen out of the collector, and the youngest generation is
    collected every 50,000 allocations instead of 700: a command allocates a few hundred
    objects, and each collection walked the warm entities again. Measured on
    bench_runtime: ~10 % less CPU per command and half the p99 latency."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(aggregates: Iterable[CompiledAggregate], settings: RunSettings,
                stop: asyncio.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM (or stop is set), then drain and return."""
    aggregates = list(aggregates)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    embedded: EmbeddedServer | None = None
    servers = list(settings.servers) or resolve_servers((), Path("/nonexistent"))
    if not servers:
        embedded = EmbeddedServer(settings.store_dir, port=settings.port)
        await asyncio.to_thread(embedded.start)
        servers = [embedded.url]
        info("started embedded nats-server", url=embedded.url, store=str(settings.store_dir.resolve()))
    try:
        lost: list[bool] = []

        async def closed() -> None:
            if not stop.is_set():  # closed by the server or after giving up: exit so a supervisor restarts us
                log.error("the NATS connection was closed; stopping")
                lost.append(True)
                stop.set()

        nc = await connect(servers, settings.options,
                           disconnected_cb=_log_async("disconnected from NATS"),
                           reconnected_cb=_log_async("reconnected to NATS"),
                           closed_cb=closed)
        info("connected", url=str(nc.connected_url.geturl() if nc.connected_url else servers[0]))
        runtime = Runtime(nc, aggregates, settings.options.js_domain)
        try:
            await runtime.start()
            tune_gc()
            info("ready", aggregates=",".join(a.name for a in aggregates))
            await stop.wait()
            info("draining")
        finally:
            await runtime.stop()
            await _close(nc)
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
            info("stopped embedded nats-server")
    info("stopped")
    if lost:
        raise ConnectionLost("the NATS connection was closed while serving")


async def _close(nc: Client) -> None:
    """Drain the connection (flushes the last replies); if it cannot drain, close it."""
    try:
        await nc.drain()
    except Exception as err:  # reconnecting or already closed: nothing is left to flush
        log.warning("could not drain the connection (%s: %s); closing it", type(err).__name__, err)
        await nc.close()


class ConnectionLost(EsfsmError):
    """The connection closed under a running runtime (it exits 1 so it can be restarted)."""


def _log_async(message: str):  # type: ignore[no-untyped-def]
    async def callback() -> None:
        log.warning(message)

    return callback
