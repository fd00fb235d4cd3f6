"""An entity as the runtime keeps it: state, the stream sequence it reflects, and
the replies of its recent commands that carried a command id.

The KV value is this record as JSON — the seed's ``AggregateState``
(``version``, ``key``, ``data``) plus ``state``, ``seq``, ``commands`` and
``fp``, the state fingerprint of the definition that computed it: a snapshot
under another (or none: written before snapshots carried one) is not trusted.
Folding stored events into it is deterministic, so any process (or the
snapshot writer) rebuilding it from the stream gets the same record.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson
from cloudevents.core.base import BaseCloudEvent

from esfsm import reading
from esfsm.compiler import CompiledAggregate
from esfsm.contract import COMMAND_ID_EXTENSION
from esfsm.errors import EsfsmError
from esfsm.events import event_to_dict
from esfsm.values import EntityState

RECENT_COMMANDS = 32  # answers of recent commands kept in the snapshot (older ones: answers.py)


class SnapshotTooLarge(EsfsmError):
    """An entity's state is too big for one NATS message, so its KV snapshot cannot be written
    (the stream, and every load's catch-up from it, are not affected)."""

    def __init__(self, key: str, size: int, limit: int) -> None:
        super().__init__(
            f"the state of {key!r} is {size} bytes as JSON, over the {limit} bytes a KV "
            f"snapshot can hold (the server's max_payload); its snapshot is not written"
        )


@dataclass
class Entity:
    state: EntityState
    seq: int = 0  # stream sequence of the last event folded in (0: none)
    commands: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    fp: str | None = None  # the state fingerprint its snapshot was written under (read back only)

    def remember(self, command_id: str, reply: dict[str, Any]) -> None:
        self.commands[command_id] = reply
        self.commands.move_to_end(command_id)
        while len(self.commands) > RECENT_COMMANDS:
            self.commands.popitem(last=False)

    def to_json(self, limit: int | None = None, fp: str | None = None) -> bytes:
        """The KV value. With limit (bytes), the oldest remembered replies are left out until
        it fits: they only answer retries, and a snapshot over the server's max_payload could
        never be written. SnapshotTooLarge when the state alone does not fit. fp: the state
        fingerprint of the definition that computed it (esfsm.model.state_fingerprint)."""
        record = {
            "version": self.state.version,
            "key": self.state.key,
            "state": self.state.state,
            "data": self.state.data,
            "seq": self.seq,
            "commands": self.commands,
        }
        if fp is not None:
            record["fp"] = fp
        value = orjson.dumps(record)
        if limit is None or len(value) <= limit:
            return value
        commands = record["commands"] = OrderedDict(self.commands)
        while commands:
            commands.popitem(last=False)
            value = orjson.dumps(record)
            if len(value) <= limit:
                return value
        raise SnapshotTooLarge(self.state.key, len(value), limit)

    @classmethod
    def from_json(cls, raw: bytes) -> Entity:
        value = orjson.loads(raw)
        state = EntityState(value["key"], value["state"], value.get("data") or {}, int(value["version"]))
        return cls(state, int(value.get("seq", 0)), OrderedDict(value.get("commands") or {}), value.get("fp"))


def accepted_reply(version: int, state: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    return {"accepted": True, "message": "command accepted", "version": version, "state": state, "events": events}


def fold(compiled: CompiledAggregate, entity: Entity, seq: int, raw: bytes) -> BaseCloudEvent:
    """Apply one stored event (CloudEvents JSON at stream sequence seq) to entity, in place."""
    event, entity.state = reading.apply(compiled, entity.state, raw)
    entity.seq = seq
    command_id = event.get_extension(COMMAND_ID_EXTENSION)
    if command_id:
        reply = entity.commands.get(command_id)
        if reply is not None and reply["version"] >= entity.state.version:
            return event  # remembered from a snapshot past this point (a replay keeps its answers as given)
        as_dict = event_to_dict(event)
        if reply is None or reply["version"] != entity.state.version - 1:
            reply = accepted_reply(entity.state.version, entity.state.state, [as_dict])
        else:
            reply = accepted_reply(entity.state.version, entity.state.state, [*reply["events"], as_dict])
        entity.remember(str(command_id), reply)
    return event
