"""The one read path: stored events become the events `evolve` sees, and state.

Every reader of an entity's history goes through here — the in-memory engine
(state, history, recorded events), the NATS runtime (load from a snapshot and
its tail, catch-up after a conflict, finding a message id, rebuild), the NATS
scenario engine and the client's history. Whatever must happen to a stored
event before a definition reads it (decoding, then upcasting older versions and
names to the current ones) is written once, here, and cannot be skipped by one reader.
`tests/test_read_path.py` fails when decoding or `evolve` is called elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from cloudevents.core.base import BaseCloudEvent

from esfsm.contract import EVENT_VERSION_EXTENSION
from esfsm.events import event_from_dict, event_from_json, event_to_dict, event_to_json
from esfsm.values import EntityState

if TYPE_CHECKING:
    from esfsm.compiler import CompiledAggregate

Stored = bytes | str | Mapping[str, Any] | BaseCloudEvent  # what a reader may hold of one event


def decode(stored: Stored) -> BaseCloudEvent:
    """One stored event (CloudEvents JSON bytes, or its JSON document, or an event object)
    as the event a definition reads."""
    if isinstance(stored, (bytes, str)):
        return event_from_json(stored)
    if isinstance(stored, Mapping):
        return event_from_dict(dict(stored))
    return stored


def document(stored: Stored) -> dict[str, Any]:
    """One stored event as its JSON document (what history shows and replies quote)."""
    return event_to_dict(decode(stored))


def encode(event: BaseCloudEvent) -> bytes:
    """An event as it is stored: CloudEvents JSON, structured mode."""
    return event_to_json(event)


def read(compiled: CompiledAggregate, state: EntityState, stored: Stored) -> BaseCloudEvent:
    """One stored event as compiled's definition reads it, in an entity at state: decoded,
    then upcast to its current type and version (UnreadableEvent when it cannot be)."""
    return compiled.upcast(state, decode(stored))


def apply(compiled: CompiledAggregate, state: EntityState, stored: Stored) -> tuple[BaseCloudEvent, EntityState]:
    """Apply one stored event to state: the event as read (upcast), and the state after it."""
    event = compiled.upcast(state, decode(stored))
    return event, compiled.evolve(state, event)


def fold(compiled: CompiledAggregate, state: EntityState, events: Iterable[Stored]) -> EntityState:
    """state after each of events, in order."""
    for stored in events:
        state = compiled.evolve(state, compiled.upcast(state, decode(stored)))
    return state


def stored_version(stored: Stored) -> int:
    """The version of its type's data an event was stored with (1 when it says none: every
    event written before events carried versions is version 1)."""
    version = decode(stored).get_extension(EVENT_VERSION_EXTENSION)
    return version if isinstance(version, int) and not isinstance(version, bool) else 1


def replay(compiled: CompiledAggregate, key: str, events: Iterable[Stored]) -> EntityState:
    """The entity's state from its whole history, from the definition's initial state."""
    return fold(compiled, compiled.initial_state(key), events)
