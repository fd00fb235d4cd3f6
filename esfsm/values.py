"""The values that flow through decide and evolve: entity state, command, outcome."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from cloudevents.core.base import BaseCloudEvent

from esfsm.contract import COMMAND_ID_HEADER, EXPECTED_VERSION_HEADER, KEY_HEADER

__all__ = ["COMMAND_ID_HEADER", "EXPECTED_VERSION_HEADER", "KEY_HEADER"]  # re-exported: older imports

KEY_PATTERN = re.compile(r"[A-Za-z0-9_=-]{1,128}")
AGGREGATE_NAME = re.compile(r"[a-z][a-z0-9_]*")  # the DSL's aggregate names (aggregate.schema.json)
HEADER_NAME = re.compile(r"[!-9;-~]+")  # what NATS carries as a header name: printable ASCII but ':'


# Rejection codes (DESIGN.md, "The wire contract").
BAD_REQUEST = 400
FORBIDDEN = 403
NOT_FOUND = 404
CONFLICT = 409
TOO_LARGE = 413  # the resulting state would not fit one snapshot (a KV value)
UNPROCESSABLE = 422
INTERNAL = 500
UNAVAILABLE = 503


def valid_key(key: object) -> bool:
    """An entity key is one subject token and a valid KV key: [A-Za-z0-9_=-]{1,128}."""
    return isinstance(key, str) and KEY_PATTERN.fullmatch(key) is not None


@dataclass(frozen=True)
class EntityState:
    """An entity after `version` events: its state-machine state and its data."""

    key: str
    state: str
    data: Mapping[str, Any]
    version: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "key": self.key, "state": self.state, "data": dict(self.data)}


@dataclass(frozen=True)
class CommandRequest:
    """A command as it arrives: name, entity key, JSON payload and headers."""

    name: str
    key: str
    payload: Any
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ErrorDetail:
    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


@dataclass(frozen=True)
class Rejected:
    code: int
    message: str
    errors: tuple[ErrorDetail, ...] = ()
    accepted: Literal[False] = field(default=False, init=False)  # the tag: `if decision.accepted` narrows Decision

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": False,
            "message": self.message,
            "code": self.code,
            "errors": [e.as_dict() for e in self.errors],
        }


@dataclass(frozen=True)
class Accepted:
    """The command's events, in order, and the entity state they lead to."""

    events: tuple[BaseCloudEvent, ...]
    state: EntityState
    message: str = "command accepted"
    accepted: Literal[True] = field(default=True, init=False)

    def as_dict(self) -> dict[str, Any]:
        from esfsm.events import event_to_dict

        return {
            "accepted": True,
            "message": self.message,
            "version": self.state.version,
            "state": self.state.state,
            "events": [event_to_dict(e) for e in self.events],
        }


Decision = Accepted | Rejected
