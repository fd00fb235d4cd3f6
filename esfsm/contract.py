"""The wire contract's names, in one place (DESIGN.md, "The wire contract").

Every subject, header, durable, bucket and discovery name that the runtime,
the client, the docs generator and the tests use is spelled here once. A
definition's `nats:` block chooses the prefixes (`NatsNames` in model.py);
these functions build the rest from them.
"""

from __future__ import annotations

# -- headers ------------------------------------------------------------------
KEY_HEADER = "x-ergonats-entity-key"  # the entity a command is for (the seed's header)
COMMAND_ID_HEADER = "x-esfsm-command-id"  # idempotency: a retry gets the first answer
EXPECTED_VERSION_HEADER = "x-esfsm-expected-version"  # optimistic concurrency, 0 = not created yet
TEST_NOW_HEADER = "x-esfsm-test-now"  # the scenario clock; honoured only by `esfsm test --nats`
ERROR_HEADER = "Nats-Service-Error"  # ADR-32 micro error headers on a rejection
ERROR_CODE_HEADER = "Nats-Service-Error-Code"

# -- CloudEvents extensions ---------------------------------------------------
ENTITY_KEY_EXTENSION = "entitykey"  # the seed's extension
VERSION_EXTENSION = "aggversion"  # the aggregate version the event produced
EVENT_VERSION_EXTENSION = "eventversion"  # the version of the event type's data (absent: 1)
COMMAND_ID_EXTENSION = "commandid"  # the command id of the command that caused the event

# -- discovery ----------------------------------------------------------------
SERVICE_PREFIX = "aggregate-"
PING_SUBJECT = "$SRV.PING"


def service_name(aggregate: str) -> str:
    """The NATS micro service serving aggregate."""
    return f"{SERVICE_PREFIX}{aggregate}"


def info_subject(aggregate: str) -> str:
    """Where the service of aggregate answers discovery (its endpoints and metadata)."""
    return f"$SRV.INFO.{service_name(aggregate)}"


def aggregate_of_service(name: str) -> str | None:
    """The aggregate a micro service name serves, or None for a service that is not esfsm's."""
    return name.removeprefix(SERVICE_PREFIX) if name.startswith(SERVICE_PREFIX) else None


# -- default names of a definition's `nats:` block ----------------------------
def default_commands(aggregate: str) -> str:
    return f"{aggregate}.cmds"


def default_events(aggregate: str) -> str:
    return f"{aggregate}.events"


def default_stream(aggregate: str) -> str:
    return f"{aggregate.upper()}_EVENTS"


def default_bucket(aggregate: str) -> str:
    return f"AGG_{aggregate}"


def durable_name(aggregate: str) -> str:
    """The durable consumer that keeps the snapshots current, as in the seed."""
    return f"AGG_{aggregate}"


# -- subjects -----------------------------------------------------------------
def command_subject(commands: str, command: str) -> str:
    return f"{commands}.{command}"


def all_commands(commands: str) -> str:
    return f"{commands}.>"


def stream_subjects(events: str) -> str:
    """What the event stream holds: every entity's events."""
    return f"{events}.>"


def entity_subjects(events: str, key: str) -> str:
    """Every event of one entity (the filter of its concurrency check and of its reads)."""
    return f"{events}.{key}.>"


def event_subject(events: str, key: str, event_type: str) -> str:
    return f"{events}.{key}.{event_type}"


def key_of_subject(events: str, subject: str) -> str | None:
    """The entity key in an event's subject, or None when subject is not under events."""
    prefix = f"{events}."
    if not subject.startswith(prefix):
        return None
    return subject[len(prefix) :].split(".", 1)[0]


def kv_stream(bucket: str) -> str:
    """The stream behind a KV bucket."""
    return f"KV_{bucket}"


def kv_subject(bucket: str, key: str) -> str:
    """The subject a KV bucket stores key on."""
    return f"$KV.{bucket}.{key}"


def answers_bucket(bucket: str) -> str:
    """The KV bucket that keeps the answers to command ids (durable idempotency)."""
    return f"{bucket}_ids"


def catalog_bucket(bucket: str) -> str:
    """The KV bucket of what the stream may hold (event types x versions, states) and of the
    definitions that have served the aggregate (runtime/catalog.py)."""
    return f"{bucket}_catalog"
