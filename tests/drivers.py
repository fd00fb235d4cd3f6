"""Drivers for the behaviour suite: one interface, one implementation per engine.

The suite in test_behaviour.py speaks only in wire terms (reply JSON, state
JSON, CloudEvents as dicts), so the NATS runtime can join it with a driver of
its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from esfsm.engine import MemoryEngine
from esfsm.events import event_to_dict
from esfsm.project import Project


class Driver(Protocol):
    def send(
        self, aggregate: str, command: str, key: str, payload: Any = None, headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]: ...

    def state(self, aggregate: str, key: str) -> dict[str, Any]: ...

    def history(self, aggregate: str, key: str) -> list[dict[str, Any]]: ...


class MemoryDriver:
    def __init__(self, project: Project) -> None:
        self.engine = MemoryEngine(project.aggregates.values())

    def send(
        self, aggregate: str, command: str, key: str, payload: Any = None, headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        return self.engine.handle(aggregate, command, key, payload, headers).as_dict()

    def state(self, aggregate: str, key: str) -> dict[str, Any]:
        return self.engine.state(aggregate, key).as_dict()

    def history(self, aggregate: str, key: str) -> list[dict[str, Any]]:
        return [event_to_dict(e) for e in self.engine.history(aggregate, key)]


class NatsDriver:
    """Talks to a running `esfsm run` through esfsm.Client over a real nats-server."""

    def __init__(self, project: Project, url: str) -> None:
        from nats_support import LoopThread

        from esfsm.client import Client

        self.project = project
        self.loop = LoopThread()
        self.client: Client = self.loop.run(Client.connect([url], timeout=10.0))

    def close(self) -> None:
        self.loop.run(self.client.close())
        self.loop.close()

    def send(
        self, aggregate: str, command: str, key: str, payload: Any = None, headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        return self.loop.run(self.client.send(aggregate, command, key, payload, dict(headers or {})))

    def state(self, aggregate: str, key: str) -> dict[str, Any]:
        value = self.loop.run(self.client.state(aggregate, key, wait=5.0))
        if value is None:
            return self.project.aggregates[aggregate].initial_state(key).as_dict()
        assert "stale" not in value, value
        return {k: value[k] for k in ("version", "key", "state", "data")}

    def history(self, aggregate: str, key: str) -> list[dict[str, Any]]:
        events = self.loop.run(self.client.history(aggregate, key))
        return [{k: v for k, v in e.items() if k != "seq"} for e in events]
