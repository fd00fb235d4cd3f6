"""Run scenario files against the real runtime (`esfsm test --nats`).

An embedded nats-server (temporary store) and an in-process runtime run on an
event loop in a background thread; each scenario gets an engine that speaks
to the runtime over NATS exactly as a client would. Before an entity key is
first used in a scenario its events, snapshot and cached state are purged, so
scenarios stay independent while keys (and anything derived from them) are
kept as written. The runtime's clock comes from the scenario (`now`), through
a header only this test runtime honours.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

from cloudevents.core.base import BaseCloudEvent
from nats.js.errors import KeyNotFoundError

from esfsm import contract, reading
from esfsm.compiler import CompiledAggregate
from esfsm.contract import KEY_HEADER, TEST_NOW_HEADER
from esfsm.expressions import format_time
from esfsm.runtime.connection import ConnectOptions, connect
from esfsm.runtime.jetstream import Outgoing
from esfsm.runtime.runner import Runtime
from esfsm.runtime.server import EmbeddedServer
from esfsm.values import Accepted, Decision, EntityState, ErrorDetail, Rejected

T = TypeVar("T")


class LoopThread:
    """An asyncio loop in a thread, so synchronous code can run coroutines on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="esfsm-loop")
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class NatsBackend:
    """An embedded server plus a runtime with the scenario clock; a context manager."""

    def __init__(self, aggregates: Iterable[CompiledAggregate]) -> None:
        self.aggregates = list(aggregates)
        self._dir = tempfile.TemporaryDirectory(prefix="esfsm-test-")
        self.server = EmbeddedServer(Path(self._dir.name))
        self.loop = LoopThread()

    def __enter__(self) -> NatsBackend:
        self.server.start()
        self.nc = self.loop.run(connect([self.server.url], ConnectOptions(name="esfsm-test")))
        self.runtime = Runtime(self.nc, self.aggregates, test_clock=True)
        self.loop.run(self.runtime.start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.loop.run(self.runtime.stop())
            self.loop.run(self.nc.close())
        finally:
            self.loop.close()
            self.server.stop()
            self._dir.cleanup()

    def engine(self, aggregate: CompiledAggregate, clock: Callable[[], dt.datetime]) -> NatsScenarioEngine:
        return NatsScenarioEngine(self, aggregate, clock)


class NatsScenarioEngine:
    """The engine interface the scenario runner uses, served by the NATS runtime."""

    def __init__(self, backend: NatsBackend, aggregate: CompiledAggregate, clock: Callable[[], dt.datetime]) -> None:
        self.backend = backend
        self.aggregate = aggregate
        self.clock = clock
        self.service = backend.runtime.services[aggregate.name]
        self.store = self.service.store
        self._touched: set[str] = set()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.backend.loop.run(coroutine)

    async def _purge(self, key: str) -> None:
        if key in self._touched:
            return
        self._touched.add(key)
        await self.store.js.purge_stream(self.store.names.stream, subject=self.store.entity_subjects(key))
        assert self.store.kv is not None
        try:
            await self.store.kv.purge(key)
        except KeyNotFoundError:
            pass
        await self.store.answers.purge(key)
        self.service.forget(key)

    def handle(
        self, aggregate: str, command: str, key: str, payload: Any = None, headers: dict[str, str] | None = None
    ) -> Decision:
        async def go() -> dict[str, Any]:
            if self._valid(key):
                await self._purge(key)
            subject, body, all_headers = self._request(command, key, payload, headers)
            msg = await self.backend.nc.request(subject, body, 30, headers=all_headers)
            import orjson

            return orjson.loads(msg.data)  # type: ignore[no-any-return]

        reply = self._run(go())
        if not reply["accepted"]:
            errors = tuple(ErrorDetail(e["path"], e["message"]) for e in reply.get("errors", []))
            return Rejected(reply["code"], reply["message"], errors)
        events = tuple(reading.decode(e) for e in reply["events"])
        return Accepted(events, EntityState(key, reply["state"], {}, reply["version"]))

    def _request(self, command: str, key: str, payload: Any, headers: dict[str, str] | None) -> tuple[str, bytes, Any]:
        from esfsm.client import payload_json

        all_headers = {**(headers or {}), KEY_HEADER: key, TEST_NOW_HEADER: format_time(self.clock())}
        subject = contract.command_subject(self.aggregate.model.nats.commands, command)
        return subject, payload_json({} if payload is None else payload), all_headers

    @staticmethod
    def _valid(key: str) -> bool:
        from esfsm.values import valid_key

        return valid_key(key)

    def state(self, aggregate: str, key: str) -> EntityState:
        if not self._valid(key):  # never stored: what the in-memory engine answers too
            return self.aggregate.initial_state(key)

        async def go() -> EntityState:
            await self._purge(key)
            last = await self.store.last_seq(key)
            for _ in range(200):  # the snapshot is written off the command path
                snapshot, _ = await self.store.snapshot(key)
                if last == 0 or (snapshot is not None and snapshot.seq >= last):
                    break
                await asyncio.sleep(0.02)
            if snapshot is None or last == 0:
                return self.aggregate.initial_state(key)
            if snapshot.seq < last:
                raise AssertionError(f"the snapshot of {key!r} is stuck at sequence {snapshot.seq} < {last}")
            return snapshot.state

        return self._run(go())

    def record(self, aggregate: str, key: str, events: Iterable[BaseCloudEvent]) -> EntityState:
        from esfsm.command_path import check_key
        from esfsm.errors import ScenarioError

        problem = check_key(key)
        if problem:  # as the in-memory engine refuses it
            raise ScenarioError(problem.message)

        async def go() -> EntityState:
            await self._purge(key)
            entity = await self.store.load(key)
            given = list(events)
            state = reading.fold(self.aggregate, entity.state, given)  # refuses an invalid transition
            outgoing = [
                Outgoing(self.store.subject(key, event.get_type()), reading.encode(event), event.get_id())
                for event in given
            ]
            await self.store.append(key, entity.seq, outgoing)
            return state

        return self._run(go())
