"""An AsyncAPI 3.0 document per aggregate, describing the application `esfsm run`
serves for it (the micro service ``aggregate-<name>``):

* it **receives** each command on ``<commands>.<command>`` and replies on the
  requester's inbox, with the accepted reply or the rejection;
* it **sends** each event, a CloudEvent in JSON structured mode, on
  ``<events>.{key}.<event>`` (stored in the stream);
* it **sends** each entity's state to the KV bucket (``$KV.<bucket>.{key}``).

Schemas use AsyncAPI's default schema format (a superset of JSON Schema draft 07),
which every AsyncAPI tool reads. The definitions' schemas are JSON Schema 2020-12
and are copied as written: the keywords they use mean the same in both drafts,
except those 2020-12 added (``prefixItems``, ``unevaluatedProperties``, …), which
draft-07 tools ignore. Local ``$ref``s of a definition's schema are rewritten to
point into the component that holds it, so they resolve inside this document.
"""

from __future__ import annotations

import copy
from typing import Any

from esfsm import __version__
from esfsm.compiler import CompiledAggregate
from esfsm.contract import (
    COMMAND_ID_EXTENSION,
    COMMAND_ID_HEADER,
    ENTITY_KEY_EXTENSION,
    ERROR_CODE_HEADER,
    ERROR_HEADER,
    EVENT_VERSION_EXTENSION,
    EXPECTED_VERSION_HEADER,
    KEY_HEADER,
    VERSION_EXTENSION,
    event_subject,
    kv_subject,
    stream_subjects,
)
from esfsm.docgen.facts import (
    accepted_in,
    definition_path,
    durable_name,
    emitted_events,
    emitters,
    in_state_order,
    resulting_states,
)

ASYNCAPI = "3.0.0"
NATS_BINDING = "0.1.0"
JSON = "application/json"
CLOUDEVENTS_JSON = "application/cloudevents+json"


def _pointer(*parts: str) -> str:
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def _message(name: str, title: str, summary: str, content_type: str, headers: str, payload: str) -> dict[str, Any]:
    """A message whose headers and payload are schemas under components/schemas."""
    return {
        "name": name,
        "title": title,
        **({"summary": summary} if summary else {}),
        "contentType": content_type,
        "headers": _ref("components", "schemas", headers),
        "payload": _ref("components", "schemas", payload),
    }


def _ref(*parts: str) -> dict[str, str]:
    return {"$ref": _pointer(*parts)}


def _localize(schema: Any, base: str) -> Any:
    """A copy of schema whose local references (``#…``) point below base instead of
    the root of the document."""
    if isinstance(schema, dict):
        out = {}
        for key, value in schema.items():
            if key == "$ref" and isinstance(value, str) and (value == "#" or value.startswith("#/")):
                out[key] = base + value[1:]
            else:
                out[key] = _localize(value, base)
        return out
    if isinstance(schema, list):
        return [_localize(v, base) for v in schema]
    return copy.deepcopy(schema)


def _entity_key(description: str) -> dict[str, Any]:
    return {
        "type": "string",
        "pattern": "^[A-Za-z0-9_=-]{1,128}$",
        "description": f"{description} One subject token and a valid KV key.",
    }


def _command_id(description: str) -> dict[str, Any]:
    return {
        "type": "string",
        "pattern": "^[ -~]{1,256}$",
        "description": f"{description} 1 to 256 printable ASCII characters.",
    }


def _common_schemas() -> dict[str, Any]:
    return {
        "command_headers": {
            "type": "object",
            "required": [KEY_HEADER],
            "properties": {
                KEY_HEADER: _entity_key("The key of the entity the command is for (required)."),
                COMMAND_ID_HEADER: _command_id(
                    "Idempotency: a retry with the same id on the same entity is applied once and answered as "
                    "the first time. Written on the events as `commandid`."
                ),
                EXPECTED_VERSION_HEADER: {
                    "type": "string",
                    "pattern": "^[0-9]{1,18}$",
                    "description": "The version the entity must have before this command (0: no event yet); "
                    "otherwise the command is rejected with 409.",
                },
            },
            "additionalProperties": {
                "type": "string",
                "description": "Any other header is available to the definition's expressions as `meta`.",
            },
        },
        "rejection": {
            "type": "object",
            "required": ["accepted", "message", "code", "errors"],
            "properties": {
                "accepted": {"const": False},
                "message": {"type": "string"},
                "code": {
                    "type": "integer",
                    "minimum": 400,
                    "maximum": 599,
                    "description": "400 bad request (key, headers, JSON, payload schema), 403 authorize rule, "
                    "404 unknown command, 409 not accepted in this state or version conflict, "
                    "422 business rule or invalid resulting data, 500 definition or storage "
                    "failure, 503 JetStream unavailable; a rule may set its own code (400-499).",
                },
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["path", "message"],
                        "properties": {
                            "path": {
                                "type": "string",
                                "description": "JSON pointer of the offending value; "
                                "empty when it concerns the whole command.",
                            },
                            "message": {"type": "string"},
                        },
                    },
                },
            },
        },
        "rejection_headers": {
            "type": "object",
            "required": [ERROR_HEADER, ERROR_CODE_HEADER],
            "properties": {
                ERROR_HEADER: {"type": "string", "description": "The rejection message."},
                ERROR_CODE_HEADER: {"type": "string", "pattern": "^[0-9]{3}$", "description": "The rejection code."},
            },
        },
        "event_headers": {
            "type": "object",
            "required": ["Content-Type", "Nats-Msg-Id"],
            "properties": {
                "Content-Type": {"const": CLOUDEVENTS_JSON},
                "Nats-Msg-Id": {"type": "string", "description": "The event id (JetStream de-duplication)."},
            },
        },
    }


def _cloudevent(compiled: CompiledAggregate, event: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": f"The CloudEvents 1.0 event `{event}`, JSON structured mode.",
        "required": [
            "specversion",
            "id",
            "source",
            "type",
            "subject",
            "time",
            "datacontenttype",
            ENTITY_KEY_EXTENSION,
            VERSION_EXTENSION,
            "data",
        ],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {"type": "string", "description": "A new UUID, also the message's Nats-Msg-Id."},
            "source": {"const": f"esfsm/{compiled.name}"},
            "type": {"const": event},
            "subject": _entity_key("The entity key."),
            "time": {
                "type": "string",
                "format": "date-time",
                "description": "When the command was decided (the `now` its expressions saw).",
            },
            "datacontenttype": {"const": JSON},
            ENTITY_KEY_EXTENSION: _entity_key("Extension: the entity key (as in the ergonats seed)."),
            VERSION_EXTENSION: {
                "type": "integer",
                "minimum": 1,
                "description": "Extension: the entity's version after this event (1 for the first).",
            },
            EVENT_VERSION_EXTENSION: {
                "type": "integer",
                "minimum": 1,
                "maximum": compiled.model.events[event].version,
                "description": (
                    f"Extension: the version of the event's data; this definition publishes version "
                    f"{compiled.model.events[event].version}. Events stored by older definitions carry the version "
                    "they were written with (absent: 1) and are read through the definition's upcast steps."
                ),
            },
            COMMAND_ID_EXTENSION: _command_id(
                f"Extension, only when the command carried {COMMAND_ID_HEADER}: that id."
            ),
            "data": _ref("components", "schemas", f"event.{event}.data"),
        },
    }


def _emitted(compiled: CompiledAggregate, event: str) -> str:
    if compiled.model.events[event].retired:
        return "Retired: no command emits it any more, the events already stored still replay"
    return "Emitted by " + (", ".join(f"`{c}`" for c in emitters(compiled, event)) or "no command")


def _accepted(compiled: CompiledAggregate, command: str) -> dict[str, Any]:
    events = [_ref("components", "schemas", f"event.{e}.cloudevent") for e in emitted_events(compiled, command)]
    return {
        "type": "object",
        "required": ["accepted", "message", "version", "state", "events"],
        "properties": {
            "accepted": {"const": True},
            "message": {"type": "string"},
            "version": {"type": "integer", "minimum": 0, "description": "The entity's version after the command."},
            "state": {
                "enum": resulting_states(compiled, command),
                "description": "The entity's state after the command.",
            },
            "events": {
                "type": "array",
                "maxItems": len(compiled.model.commands[command].emits),
                "items": events[0] if len(events) == 1 else {"oneOf": events},
                "description": "The events the command emitted, in order (empty when every conditional "
                "emit was skipped).",
            },
        },
    }


def _state_value(compiled: CompiledAggregate) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["version", "key", "state", "data"],
        "properties": {
            "version": {"type": "integer", "minimum": 0, "description": "The number of events the entity has."},
            "key": _entity_key("The entity key."),
            "state": {"enum": list(compiled.model.states)},
            "data": _ref("components", "schemas", "aggregate.data"),
            "seq": {
                "type": "integer",
                "minimum": 0,
                "description": "The stream sequence of the last event this value reflects.",
            },
            "commands": {
                "type": "object",
                "additionalProperties": {"type": "object"},
                "description": "The replies of the entity's recent command ids.",
            },
        },
    }


def _command_text(compiled: CompiledAggregate, command: str) -> str:
    model = compiled.model.commands[command]
    lines = [f"Accepted in: {', '.join(f'`{s}`' for s in accepted_in(compiled, command))}."]
    emits = [f"`{e.event}`" + (f" if `{e.condition}`" if e.condition else "") for e in model.emits]
    lines.append(f"Emits: {', '.join(emits)}.")
    rules = [*compiled.authorize, *compiled.commands[command].rules]
    if rules:
        lines.append("Rules, in order (the first false one rejects the command):")
        lines.extend(f"- `{r.expression.source}`: {r.code} {r.message}" for r in rules)
    return "\n".join(lines)


def asyncapi_document(compiled: CompiledAggregate) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of one aggregate, as plain data in a stable order."""
    model = compiled.model
    nats = model.nats
    schemas: dict[str, Any] = {
        "aggregate.data": _localize(model.data_schema, _pointer("components", "schemas", "aggregate.data"))
    }
    schemas.update(_common_schemas())
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}

    messages["rejected"] = {
        "name": "rejected",
        "title": "Rejection",
        "summary": "The command was rejected; nothing was written.",
        "contentType": JSON,
        "headers": _ref("components", "schemas", "rejection_headers"),
        "payload": _ref("components", "schemas", "rejection"),
    }
    for name, command in model.commands.items():
        channel, reply = f"command.{name}", f"command.{name}.reply"
        payload = f"command.{name}.payload"
        schemas[payload] = _localize(command.schema, _pointer("components", "schemas", payload))
        schemas[f"command.{name}.accepted"] = _accepted(compiled, name)
        messages[f"command.{name}"] = _message(
            name, f"Command {name}", command.description, JSON, "command_headers", payload
        )
        messages[f"command.{name}.accepted"] = {
            "name": f"{name}_accepted",
            "title": f"{name} accepted",
            "summary": "Every event of the command is stored and acknowledged by JetStream.",
            "contentType": JSON,
            "payload": _ref("components", "schemas", f"command.{name}.accepted"),
        }
        channels[channel] = {
            "address": f"{nats.commands}.{name}",
            "title": f"Command {name}",
            "messages": {"request": _ref("components", "messages", f"command.{name}")},
        }
        channels[reply] = {
            "address": None,
            "title": f"Reply to {name}",
            "description": "The requester's inbox: the reply subject of the NATS request.",
            "messages": {
                "accepted": _ref("components", "messages", f"command.{name}.accepted"),
                "rejected": _ref("components", "messages", "rejected"),
            },
        }
        operations[f"command.{name}"] = {
            "action": "receive",
            "channel": _ref("channels", channel),
            "title": f"Handle {name}",
            **({"summary": command.description} if command.description else {}),
            "description": _command_text(compiled, name),
            "messages": [_ref("channels", channel, "messages", "request")],
            "reply": {
                "channel": _ref("channels", reply),
                "messages": [
                    _ref("channels", reply, "messages", "accepted"),
                    _ref("channels", reply, "messages", "rejected"),
                ],
            },
            "bindings": {"nats": {"queue": model.name, "bindingVersion": NATS_BINDING}},
            "x-esfsm-accepted-in": accepted_in(compiled, name),
            "x-esfsm-emits": emitted_events(compiled, name),
        }

    key_parameter = {"key": {"description": "The entity key."}}
    for name, event in model.events.items():
        data = f"event.{name}.data"
        schemas[data] = _localize(event.schema, _pointer("components", "schemas", data))
        schemas[f"event.{name}.cloudevent"] = _cloudevent(compiled, name)
        messages[f"event.{name}"] = _message(
            name, f"Event {name}", event.description, CLOUDEVENTS_JSON, "event_headers", f"event.{name}.cloudevent"
        )
        channels[f"event.{name}"] = {
            "address": event_subject(nats.events, "{key}", name),
            "title": f"Event {name}",
            "description": f"Stored in the stream `{nats.stream}` (subjects `{stream_subjects(nats.events)}`).",
            "messages": {"event": _ref("components", "messages", f"event.{name}")},
            "parameters": copy.deepcopy(key_parameter),
        }
        sources = list(model.source_states(event))
        operations[f"event.{name}"] = {
            "action": "send",
            "channel": _ref("channels", f"event.{name}"),
            "title": f"Publish {name}",
            **({"summary": event.description} if event.description else {}),
            "description": _emitted(compiled, name)
            + "; "
            + ", ".join(f"`{s}` → `{event.dest or s}`" for s in sources)
            + "."
            + (
                f" Formerly {', '.join(f'`{n}`' for n in event.formerly)}: stored events of those types, on their "
                "own subjects, are read as this one."
                if event.formerly
                else ""
            ),
            "messages": [_ref("channels", f"event.{name}", "messages", "event")],
            "x-esfsm-from": in_state_order(compiled, sources),
            "x-esfsm-to": event.dest,
            "x-esfsm-version": event.version,
            **({"x-esfsm-formerly": list(event.formerly)} if event.formerly else {}),
            **({"x-esfsm-retired": True} if event.retired else {}),
        }

    schemas["state"] = _state_value(compiled)
    messages["state"] = {
        "name": "state",
        "title": "Entity state",
        "summary": "The entity's current state, the value under its key in the KV bucket.",
        "contentType": JSON,
        "payload": _ref("components", "schemas", "state"),
    }
    channels["state"] = {
        "address": kv_subject(nats.bucket, "{key}"),
        "title": "Entity state",
        "description": f"The KV bucket `{nats.bucket}`, key = entity key: read it with a KV get or watch. "
        f"Written by the durable consumer `{durable_name(model.name)}` after the events are stored.",
        "messages": {"state": _ref("components", "messages", "state")},
        "parameters": copy.deepcopy(key_parameter),
    }
    operations["state"] = {
        "action": "send",
        "channel": _ref("channels", "state"),
        "title": "Update the entity state",
        "messages": [_ref("channels", "state", "messages", "state")],
    }

    description = (model.description + "\n\n" if model.description else "") + (
        f"Served by `esfsm run` as the NATS micro service `{model.service_name}` (queue group `{model.name}`). "
        f"Generated by `esfsm docs` from `{definition_path(compiled)}`."
    )
    return {
        "asyncapi": ASYNCAPI,
        "info": {"title": model.service_name, "version": __version__, "description": description},
        "defaultContentType": JSON,
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
        "x-esfsm": {
            "aggregate": model.name,
            "definition": definition_path(compiled),
            "service": model.service_name,
            "queue_group": model.name,
            "commands": nats.commands,
            "events": nats.events,
            "stream": nats.stream,
            "bucket": nats.bucket,
            "consumer": durable_name(model.name),
            "replicas": nats.replicas,
            "initial": model.initial,
            "states": list(model.states),
            "final": [s.name for s in model.states.values() if s.final],
        },
    }
