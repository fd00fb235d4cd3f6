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
    def send(self, aggregate: str, command: str, key: str, payload: Any = None,
             headers: Mapping[str, str] | None = None) -> dict[str, Any]: ...

    def state(self, aggregate: str, key: str) -> dict[str, Any]: ...

    def history(self, aggregate: str, key: str) -> list[dict[str, Any]]: ...


class MemoryDriver:
    def __init__(self, project: Project) -> None:
        self.engine = MemoryEngine(project.aggregates.values())

    def send(self, aggregate: str, command: str, key: str, payload: Any = None,
             headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        return self.engine.handle(aggregate, command, key, payload, headers).as_dict()

    def state(self, aggregate: str, key: str) -> dict[str, Any]:
        return self.engine.state(aggregate, key).as_dict()

    def history(self, aggregate: str, key: str) -> list[dict[str, Any]]:
        return [event_to_dict(e) for e in self.engine.history(aggregate, key)]
