"""CloudEvents 1.0 for esfsm events (structured JSON mode, `entitykey` extension)."""

from __future__ import annotations

import datetime as dt
import json
from random import getrandbits
from typing import Any

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from esfsm.expressions import format_time
from esfsm.seam import unchecked_event

CONTENT_TYPE = "application/cloudevents+json"
_FORMAT = JSONFormat()


def new_event(
    aggregate: str,
    event_type: str,
    key: str,
    version: int,
    data: Any,
    time: dt.datetime,
    event_id: str | None = None,
    command_id: str | None = None,
    event_version: int = 1,
) -> CloudEvent:
    """A new event: `entitykey` names the entity, `aggversion` the version it produces,
    `eventversion` the version of its type's data, `commandid` (when the command carried one)
    the command that caused it."""
    attributes: dict[str, Any] = {
        "id": event_id or new_event_id(),
        "source": f"esfsm/{aggregate}",
        "type": event_type,
        "specversion": "1.0",
        "subject": key,
        "time": time,
        "datacontenttype": "application/json",
        "entitykey": key,
        "aggversion": version,
        "eventversion": event_version,
    }
    if command_id:
        attributes["commandid"] = command_id
    shape = (aggregate, event_type, bool(command_id))
    if shape in _VALIDATED and key and time.tzinfo is not None:
        # The SDK checked an event of this very shape: names and constant values
        # were valid; what changes per event (id, key, time, version, command id)
        # has the types it accepted then. Its per-event checks are a third of decide.
        return unchecked_event(CloudEvent, attributes, data)
    event = CloudEvent(attributes, data)
    if len(_VALIDATED) < 10_000:
        _VALIDATED.add(shape)
    return event


_VALIDATED: set[tuple[str, str, bool]] = set()


def new_event_id() -> str:
    """A random (version 4) UUID as text, without building a uuid.UUID. The bits come from
    `random` (seeded from the OS at start and again in a forked child): ids must be unique,
    not secret, and this is a tenth of the cost of asking the OS for each."""
    n = (getrandbits(128) & _CLEAR) | _V4
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_CLEAR = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)  # version nibble, variant bits
_V4 = (0x4 << 76) | (0x2 << 62)  # version 4, RFC 4122 variant (10xx)


def event_to_json(event: BaseCloudEvent) -> bytes:
    return _FORMAT.write(event)


def event_from_json(raw: bytes | str) -> BaseCloudEvent:
    return _FORMAT.read(CloudEvent, raw)


def event_to_dict(event: BaseCloudEvent) -> dict[str, Any]:
    attributes = dict(event.get_attributes())
    if isinstance(attributes.get("time"), dt.datetime):
        attributes["time"] = format_time(attributes["time"])
    attributes["data"] = event.get_data()
    return attributes


def event_from_dict(raw: dict[str, Any]) -> BaseCloudEvent:
    return event_from_json(json.dumps(raw))


def with_type_and_data(event: BaseCloudEvent, event_type: str, version: int, data: Any) -> BaseCloudEvent:
    """event read as another type, version and data (what upcasting gives): every other
    attribute, its id, time, key and command id included, is kept."""
    attributes = dict(event.get_attributes())
    attributes["type"] = event_type
    attributes["eventversion"] = version
    return unchecked_event(CloudEvent, attributes, data)
