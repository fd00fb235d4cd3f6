"""Snapshot writes go out in windows (store.WRITE_WINDOW), not as one burst per cycle.

A burst of thousands of KV writes queued the commands sent behind it (deposits' p99 at
100,000 entities: ~140 ms against ~60 ms; docs/benchmarks.md)."""

from __future__ import annotations

from typing import Any

import pytest

from nats_support import LoopThread

from esfsm.project import Project
from esfsm.runtime import store as store_module
from esfsm.runtime.connection import ConnectOptions, connect
from esfsm.runtime.entity import Entity
from esfsm.runtime.jetstream import Requester
from esfsm.runtime.store import AggregateStore


def test_write_over_keeps_at_most_a_window_in_flight(
    project: Project, nats_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "WRITE_WINDOW", 16)
    compiled = project.aggregates["bankaccount"]
    in_flight: list[int] = []
    futures: list[Any] = []
    send = Requester.send

    def counting(self: Requester, *args: Any, **kwargs: Any) -> Any:
        future = send(self, *args, **kwargs)
        futures.append(future)
        in_flight.append(sum(not f.done() for f in futures))  # sent, not yet answered
        return future

    monkeypatch.setattr(Requester, "send", counting)
    loop = LoopThread()

    async def scenario() -> list[int | BaseException]:
        nc = await connect([nats_server.url], ConnectOptions(name="windows"))
        try:
            store = AggregateStore(nc, compiled)
            await store.ensure()
            entities = [Entity(compiled.initial_state(f"win-{i}"), seq=1) for i in range(50)]
            return await store.write_over([(entity, 0) for entity in entities])
        finally:
            await nc.close()

    try:
        results = loop.run(scenario())
    finally:
        loop.close()
    assert len(results) == 50
    assert all(isinstance(r, int) and r > 0 for r in results), results  # every write stored
    assert len(in_flight) == 50 and max(in_flight) <= 16
