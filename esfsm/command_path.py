"""The one command path: what surrounds `decide`, in one order, for both engines.

docs/dsl.md, "How a command is decided", in code. The in-memory engine and the
NATS runtime (its task path and its fast path alike) call these and add only
I/O: reading the entity and earlier answers, storing events, remembering
answers.

1. `prepare`: the request checks that need no entity — the key, the command
   id's and the expected version's form (400), the command's name (404), the
   payload as JSON a definition can evaluate (400).
2. `step`, on the entity's state and the answer given before to the same
   command id (which the caller looked up): that answer again; else the
   expected version (409); else the aggregate's pure `decide`.
3. The caller refuses what its store cannot hold (`state_too_large`, 413),
   stores the events of an `Outcome` that `stores`, or confirms a
   new answer that does not against the entity's latest event, then remembers
   the answer under the command id (`Outcome.remember`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from esfsm.contract import COMMAND_ID_HEADER, EXPECTED_VERSION_HEADER, KEY_HEADER
from esfsm.values import (
    BAD_REQUEST,
    CONFLICT,
    TOO_LARGE,
    Accepted,
    CommandRequest,
    Decision,
    EntityState,
    ErrorDetail,
    Rejected,
    valid_key,
)

MAX_DEPTH = 64  # nesting of a payload: deeper ones would exhaust the validators' recursion
INT64 = (-(2**63), 2**63 - 1)  # CEL integers are 64-bit
_LONG_NUMBER = re.compile(rb"\d{19}")  # orjson reads integers past 64 bits as floats: read those exactly


def clip(text: str, limit: int = 200) -> str:
    """text, cut to limit characters: messages quote input, and input can be huge."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def bad_request(message: str, path: str = "") -> Rejected:
    return Rejected(BAD_REQUEST, message, (ErrorDetail(path, message),))


# -- step 1: the request ---------------------------------------------------------


def check_key(key: object) -> Rejected | None:
    """400 unless key is one subject token and a valid KV key."""
    if valid_key(key):
        return None
    if key is None or key == "":
        return bad_request(f"missing entity key: set the {KEY_HEADER} header")
    return bad_request(f"invalid entity key {clip(repr(key), 60)}: expected 1 to 128 characters from A-Z a-z 0-9 _ = -")


def check_command_id(headers: Mapping[str, str]) -> Rejected | None:
    """400 when x-esfsm-command-id is present but empty, too long or not printable ASCII."""
    raw = headers.get(COMMAND_ID_HEADER)
    if raw is None or (0 < len(raw) <= 256 and raw.isascii() and raw.isprintable()):
        return None
    return bad_request(f"invalid {COMMAND_ID_HEADER} {raw[:40]!r}: expected 1 to 256 printable ASCII characters")


def expected_version(headers: Mapping[str, str]) -> int | Rejected | None:
    """The x-esfsm-expected-version header as an int, None when absent, or a 400."""
    raw = headers.get(EXPECTED_VERSION_HEADER)
    if raw is None:
        return None
    text = str(raw).strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:  # '²'.isdigit() is True
        return bad_request(f"invalid {EXPECTED_VERSION_HEADER} {clip(repr(raw))}: expected a non-negative integer")
    return int(text)


def parse_json(body: bytes) -> Any:
    """A request body as JSON ({} when empty), or a 400 Rejected. Integers stay exact
    however long they are, so check_payload can name one outside 64 bits."""
    if not body.strip():
        return {}
    try:
        payload = orjson.loads(body)
        if _LONG_NUMBER.search(body):
            payload = json.loads(body)
    except orjson.JSONDecodeError as err:
        return bad_request(f"the payload is not valid JSON: {clip(str(err))}")
    except ValueError as err:  # an integer of thousands of digits (Python's conversion limit)
        return bad_request(f"the payload holds a number that cannot be read: {clip(str(err))}")
    return payload


def check_payload(payload: Any) -> Rejected | None:
    """400 for what JSON allows but a definition cannot evaluate: nesting deeper than
    MAX_DEPTH, integers outside 64 bits, non-finite numbers; and for what is no JSON at
    all (a set, bytes, a datetime, a non-string key), which only an in-process caller
    can hand the in-memory engine."""
    if _fine(payload, 0):  # the usual case, without building a path for every value
        return None
    stack = [(payload, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        problem = None
        if depth > MAX_DEPTH:
            problem = f"the payload is nested more than {MAX_DEPTH} levels deep"
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
            problem = f"{clip(str(value), 40)} at {path or '/'} is outside the 64-bit integer range"
        elif isinstance(value, float) and not math.isfinite(value):
            problem = f"{value} is not a finite number"
        elif isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                problem = f"a key {next(k for k in value if not isinstance(k, str))!r} is not a string, as JSON needs"
            stack.extend((v, f"{path}/{k}", depth + 1) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, f"{path}/{i}", depth + 1) for i, v in enumerate(value))
        elif not (value is None or isinstance(value, (str, int, float))):
            problem = f"a {type(value).__name__} value is not JSON"
        if problem:
            return bad_request(problem, path[:200])
    return None


def _fine(value: Any, depth: int) -> bool:
    """Whether check_payload has nothing to say about value (at depth)."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        number: int = value
        return INT64[0] <= number <= INT64[1]
    if depth >= MAX_DEPTH:
        return False
    if kind is dict:
        return all(type(k) is str for k in value) and all(_fine(v, depth + 1) for v in value.values())
    if kind is list:
        return all(_fine(v, depth + 1) for v in value)
    if kind is float:
        return math.isfinite(value)
    return False  # anything else: let the full walk decide


@dataclass(slots=True)  # not frozen: it is made per command, and a frozen __init__ costs twice as much
class Prepared:
    """A request that passed every check that needs no entity."""

    request: CommandRequest
    expected: int | None

    @property
    def key(self) -> str:
        return self.request.key

    @property
    def command_id(self) -> str | None:
        return self.request.headers.get(COMMAND_ID_HEADER)


def prepare(
    commands: Mapping[str, Any],
    unknown: Callable[[str], Rejected],
    command: str,
    key: object,
    headers: Mapping[str, str],
    payload: Any = None,
    body: bytes | None = None,
) -> Prepared | Rejected:
    """Steps 1-3 for a command, in this order: the key (400), the command id (400), the
    expected version's form (400), the command's name (404), the payload — as a value, or
    as the request's body (bytes) — as JSON a definition can evaluate (400)."""
    problem = check_key(key) or check_command_id(headers)
    if problem:
        return problem
    expected = expected_version(headers)
    if isinstance(expected, Rejected):
        return expected
    if command not in commands:
        return unknown(command)
    if body is not None:
        payload = parse_json(body)  # a body of JSON null stays None: the schema answers it
        if isinstance(payload, Rejected):
            return payload
    elif payload is None:
        payload = {}  # an in-process call without a payload
    problem = check_payload(payload)
    if problem:
        return problem
    assert isinstance(key, str)  # check_key looked at it
    return Prepared(CommandRequest(command, key, payload, headers), expected)


# -- step 2: on the entity ------------------------------------------------------


def version_conflict(expected: int, actual: int) -> Rejected:
    message = f"expected version {expected}, but the entity is at version {actual}"
    return Rejected(CONFLICT, message, (ErrorDetail("", message),))


def state_too_large(decision: Accepted, limit: int | None) -> Rejected | None:
    """A 413 when the state decision leads to would take more than limit bytes as JSON (the
    NATS runtime: more than one snapshot, a KV value, can hold); None when it fits."""
    if limit is None or not decision.events:
        return None
    state = decision.state
    size = len(orjson.dumps(state.data)) + len(state.state) + len(state.key)
    if size <= limit:
        return None
    message = (
        f"the command would make the state of {state.key!r} {size} bytes as JSON, over the {limit} "
        "bytes one snapshot can hold; nothing was stored"
    )
    return Rejected(TOO_LARGE, message, (ErrorDetail("/data", message),))


@dataclass(slots=True)
class Outcome:
    """What step decided: an earlier answer to repeat, or a new decision."""

    decision: Decision | None = None
    earlier: Any = None  # the answer given before to this command id, as the caller keeps it

    @property
    def stores(self) -> bool:
        """A new decision with events to append before it is answered."""
        return self.decision is not None and self.decision.accepted and bool(self.decision.events)

    @property
    def needs_confirming(self) -> bool:
        """A new answer that stores nothing: on a store shared by several processes, answer it
        only once the entity's state is known to be its latest (never on a stale state)."""
        return self.decision is not None and not self.stores


Decide = Callable[[EntityState, CommandRequest, "dt.datetime | None"], Decision]


def step(
    decide: Decide, state: EntityState, prepared: Prepared, earlier: Any = None, now: dt.datetime | None = None
) -> Outcome:
    """Step 4 onwards on the entity's state: the earlier answer to the same command id
    (looked up by the caller), else the expected version, else decide. The caller then
    checks what its store can hold (state_too_large) before storing."""
    if earlier is not None:
        return Outcome(earlier=earlier)
    if prepared.expected is not None and prepared.expected != state.version:
        return Outcome(version_conflict(prepared.expected, state.version))
    return Outcome(decide(state, prepared.request, now))
