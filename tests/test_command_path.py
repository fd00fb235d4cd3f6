"""The one command path (esfsm/command_path.py) and the one read path (esfsm/reading.py).

docs/dsl.md's "How a command is decided" is one table here, run on both engines
through the same requests; durable command ids are tried past the answers a
snapshot keeps and across a runtime restart.
"""

from __future__ import annotations

import ast
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from drivers import Driver, MemoryDriver, NatsDriver
from nats_support import RuntimeProcess, start_server

from esfsm.contract import COMMAND_ID_HEADER, EXPECTED_VERSION_HEADER, KEY_HEADER
from esfsm.engine import MemoryEngine
from esfsm.project import Project, load_project
from esfsm.runtime.entity import RECENT_COMMANDS

ROOT = Path(__file__).resolve().parent.parent
ANN = {"x-username": "ann"}
BAD_JSON = object()  # a payload that is no JSON: bytes on NATS, a set in memory


class Raw:
    """Sends a request as it arrives on the wire (NATS) or as an in-process call (memory)."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    def send(self, command: str, key: str | None, payload: Any = None, **headers: str) -> dict[str, Any]:
        headers = {**ANN, **headers}
        if isinstance(self.driver, MemoryDriver):
            value = {1, 2} if payload is BAD_JSON else payload
            return self.driver.engine.handle("bankaccount", command, key, value, headers).as_dict()  # type: ignore[arg-type]
        assert isinstance(self.driver, NatsDriver)
        body = b'{"amount": ' if payload is BAD_JSON else json.dumps({} if payload is None else payload).encode()
        if key is not None:
            headers[KEY_HEADER] = key
        nc = self.driver.client.nc
        reply = self.driver.loop.run(nc.request(f"bank.cmds.{command}", body, 10, headers=headers))
        return orjson.loads(reply.data)  # type: ignore[no-any-return]


@pytest.fixture(params=["memory", "nats"])
def raw(request: pytest.FixtureRequest, project: Project) -> Raw:
    if request.param == "nats":
        return Raw(request.getfixturevalue("nats_driver"))
    return Raw(MemoryDriver(project))


def new_key() -> str:
    return f"cp-{uuid.uuid4().hex[:12]}"


def opened(raw: Raw, balance: int = 150) -> str:
    key = new_key()
    reply = raw.send("open_account", key, {"owner": "ann", "initial_balance": balance})
    assert reply["accepted"], reply
    return key


def code(reply: dict[str, Any]) -> int | str:
    return "accepted" if reply["accepted"] else int(reply["code"])


# docs/dsl.md, "How a command is decided": each row a request on an account at version 1
# (balance 150) and what is answered. The step numbers are the table's.
TABLE: list[tuple[str, Callable[[Raw, str], dict[str, Any]], int | str, str]] = [
    ("1 no key", lambda r, k: r.send("deposit", None, {"amount": 1}), 400, "missing entity key"),
    ("1 bad key", lambda r, k: r.send("deposit", "a.b", {"amount": 1}), 400, "invalid entity key"),
    (
        "1 bad command id",
        lambda r, k: r.send("deposit", k, {"amount": 1}, **{COMMAND_ID_HEADER: "é"}),
        400,
        COMMAND_ID_HEADER,
    ),
    (
        "1 bad expected version",
        lambda r, k: r.send("deposit", k, {"amount": 1}, **{EXPECTED_VERSION_HEADER: "x"}),
        400,
        EXPECTED_VERSION_HEADER,
    ),
    ("1 before 2", lambda r, k: r.send("nope", "a.b", {}), 400, "invalid entity key"),
    ("2 unknown command", lambda r, k: r.send("depost", k, {"amount": 1}), 404, "did you mean 'deposit'"),
    ("2 before 3", lambda r, k: r.send("depost", k, BAD_JSON), 404, "unknown command"),
    ("3 no JSON", lambda r, k: r.send("deposit", k, BAD_JSON), 400, ""),
    ("3 beyond 64 bits", lambda r, k: r.send("deposit", k, {"amount": 2**64}), 400, "/amount"),
    ("3 below 64 bits", lambda r, k: r.send("deposit", k, {"amount": -(2**63) - 1}), 400, "/amount"),
    (
        "4 expected version",
        lambda r, k: r.send("deposit", k, {"amount": 1}, **{EXPECTED_VERSION_HEADER: "7"}),
        409,
        "expected version 7, but the entity is at version 1",
    ),
    ("5 authorize", lambda r, k: r.send("deposit", k, {"amount": 1}, **{"x-username": "unauthorized"}), 403, ""),
    ("6 schema", lambda r, k: r.send("deposit", k, {"amount": "1"}), 400, "invalid deposit payload"),
    (
        "7 not in this state",
        lambda r, k: r.send("open_account", k, {"owner": "b", "initial_balance": 100}),
        409,
        "is not accepted in state 'open'",
    ),
    ("8 rule", lambda r, k: r.send("withdraw", k, {"amount": 151}), 422, ""),
    (
        "11 accepted",
        lambda r, k: r.send("deposit", k, {"amount": 1}, **{EXPECTED_VERSION_HEADER: "1"}),
        "accepted",
        "command accepted",
    ),
]


@pytest.mark.parametrize(("step", "send", "answer", "says"), TABLE, ids=[row[0] for row in TABLE])
def test_the_decision_table(
    raw: Raw, step: str, send: Callable[[Raw, str], dict[str, Any]], answer: int | str, says: str
) -> None:
    key = opened(raw)
    reply = send(raw, key)
    assert code(reply) == answer, reply
    assert says in reply["message"]
    check = raw.send("deposit", key, {"amount": 1}, **{EXPECTED_VERSION_HEADER: "2" if answer == "accepted" else "1"})
    assert check["accepted"], check  # a rejection wrote nothing; an acceptance wrote one event


def test_a_command_id_refused_for_its_expected_version_gets_that_answer_again(raw: Raw) -> None:
    """The drift that used to be: the NATS runtime applied the retry sent without the header."""
    key = opened(raw)
    first = raw.send("deposit", key, {"amount": 5}, **{COMMAND_ID_HEADER: "c-1", EXPECTED_VERSION_HEADER: "9"})
    assert code(first) == 409
    again = raw.send("deposit", key, {"amount": 5}, **{COMMAND_ID_HEADER: "c-1"})
    assert again == first
    assert raw.send("deposit", key, {"amount": 1}, **{EXPECTED_VERSION_HEADER: "1"})["accepted"]


def test_a_command_id_answered_gets_the_first_answer_whatever_the_retry_carries(raw: Raw) -> None:
    key = opened(raw)
    first = raw.send("deposit", key, {"amount": 5}, **{COMMAND_ID_HEADER: "c-2"})
    assert first["accepted"] and first["version"] == 2
    for retry in ({"amount": 7}, {"amount": 5, "x": 1}):
        assert raw.send("deposit", key, retry, **{COMMAND_ID_HEADER: "c-2"}) == first
    assert raw.send("withdraw", key, {"amount": 1}, **{COMMAND_ID_HEADER: "c-2"}) == first  # another command too
    assert (
        raw.send("deposit", key, {"amount": 5}, **{COMMAND_ID_HEADER: "c-2", EXPECTED_VERSION_HEADER: "5"}) == first
    )  # before the version
    refused = raw.send("withdraw", key, {"amount": 1000}, **{COMMAND_ID_HEADER: "c-3"})
    assert code(refused) == 422
    assert raw.send("deposit", key, {"amount": 5000})["accepted"]  # now the withdrawal would pass
    assert raw.send("withdraw", key, {"amount": 1000}, **{COMMAND_ID_HEADER: "c-3"}) == refused  # not decided again


def test_bad_json_is_answered_before_the_command_id_is_looked_up(raw: Raw) -> None:
    key = opened(raw)
    first = raw.send("deposit", key, {"amount": 5}, **{COMMAND_ID_HEADER: "c-4"})
    assert first["accepted"]
    assert code(raw.send("deposit", key, BAD_JSON, **{COMMAND_ID_HEADER: "c-4"})) == 400  # step 3 before 4


def test_a_state_too_large_for_a_snapshot_is_refused_before_anything_is_stored(project: Project) -> None:
    engine = MemoryEngine(project.aggregates.values())
    engine.state_limit = 300
    reply = engine.handle("bankaccount", "open_account", "k", {"owner": "o" * 400, "initial_balance": 150}, ANN)
    assert not reply.accepted and reply.code == 413 and "nothing was stored" in reply.message
    assert engine.history("bankaccount", "k") == []
    assert engine.handle("bankaccount", "open_account", "k", {"owner": "ann", "initial_balance": 150}, ANN).accepted


OVERFLOW = """
aggregate: counter
initial: zero
states: {zero: {}, counting: {}}
data: {type: object, properties: {total: {type: integer}}}
initial_data: {total: 0}
commands:
  add:
    schema: {type: object, required: [n, times], properties: {n: {type: integer}, times: {type: integer}}}
    emit:
      - event: added
        data: {n: cmd.n, times: cmd.times}
events:
  added: {from: [zero, counting], to: counting, apply: {total: data.total + event.n * event.times}}
"""


def test_an_integer_overflow_is_a_422_naming_the_expression_and_the_field(tmp_path: Path) -> None:
    (tmp_path / "counter.yaml").write_text(OVERFLOW)
    project = load_project([tmp_path])
    assert project.ok, project.findings
    engine = MemoryEngine(project.aggregates.values())
    reply = engine.handle("counter", "add", "k", {"n": 2**40, "times": 2**40})
    assert not reply.accepted and reply.code == 422, reply
    assert "/events/added/apply/total" in reply.message and "data.total + event.n * event.times" in reply.message
    assert "64-bit" in reply.message
    assert engine.history("counter", "k") == []
    assert engine.handle("counter", "add", "k", {"n": 2, "times": 3}).accepted


# -- durable command ids ---------------------------------------------------------------------


def test_command_ids_are_answered_alike_past_the_snapshot_and_across_a_restart(
    tmp_path: Path, project: Project
) -> None:
    """More ids than a snapshot keeps (RECENT_COMMANDS), then a new runtime process: every
    answered id gets its first answer, accepted or refused, and nothing is applied twice."""
    server = start_server(tmp_path / "nats")
    runtime = RuntimeProcess(server.url, log=tmp_path / "runtime.log").start()
    driver = NatsDriver(project, server.url)
    try:
        raw = Raw(driver)
        key = opened(raw)
        refused = raw.send("withdraw", key, {"amount": 1000}, **{COMMAND_ID_HEADER: "refused"})
        assert code(refused) == 422
        first = raw.send("deposit", key, {"amount": 1}, **{COMMAND_ID_HEADER: "id-0"})
        for i in range(1, RECENT_COMMANDS + 8):
            assert raw.send("deposit", key, {"amount": 1}, **{COMMAND_ID_HEADER: f"id-{i}"})["accepted"]
        assert raw.send("deposit", key, {"amount": 5000})["accepted"]  # the withdrawal would pass now
        version = raw.send("deposit", key, {"amount": 1})["version"]
        assert runtime.terminate() == 0
        runtime = RuntimeProcess(server.url, log=tmp_path / "runtime2.log").start()
        assert raw.send("deposit", key, {"amount": 1}, **{COMMAND_ID_HEADER: "id-0"}) == first
        assert raw.send("withdraw", key, {"amount": 1000}, **{COMMAND_ID_HEADER: "refused"}) == refused
        assert raw.send("deposit", key, {"amount": 1})["version"] == version + 1  # nothing applied twice
    finally:
        driver.close()
        runtime.terminate()
        server.stop()


# -- the one read path -----------------------------------------------------------------------

READERS = {"decode": {"event_from_json", "event_from_dict"}, "evolve": {"evolve", "replay"}}
ALLOWED = {
    "esfsm/reading.py",  # the read path itself
    "esfsm/events.py",  # where decoding is defined
    "esfsm/compiler.py",  # where evolve is defined; decide applies the events it decides
}


def test_stored_events_are_read_only_through_the_read_path() -> None:
    """Every reader of stored events goes through esfsm/reading.py, so what happens to an event
    before a definition reads it (upcasting, next) cannot be skipped on one read path."""
    found = []
    for path in sorted((ROOT / "esfsm").rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        if name in ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text(), name)):
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Attribute) and not (
                    isinstance(func.value, ast.Name) and func.value.id == "reading"
                ):
                    called = func.attr  # compiled.evolve(...), events.event_from_json(...)
                elif isinstance(func, ast.Name) and func.id in READERS["decode"]:
                    called = func.id
                else:
                    continue
                if any(called in names for names in READERS.values()):
                    found.append(f"{name}:{node.lineno}: {called}()")
            if isinstance(node, ast.ImportFrom) and node.module == "esfsm.events":
                found.extend(
                    f"{name}:{node.lineno}: imports {a.name}" for a in node.names if a.name in READERS["decode"]
                )
    assert found == [], "stored events read outside esfsm/reading.py:\n" + "\n".join(found)


def test_a_reply_subject_with_non_ascii_characters_is_answered(nats_driver: NatsDriver) -> None:
    """NATS delivers such subjects and a plain nats-py responder answers them; the runtime
    used to drop the request as 'not a valid subject'."""
    nc = nats_driver.client.nc

    async def ask() -> dict[str, Any]:
        inbox = f"_INBOX.ünï.日本.{uuid.uuid4().hex}"
        sub = await nc.subscribe(inbox, max_msgs=1)
        await nc.flush()
        await nc.publish("bank.cmds.deposit", b'{"amount": 1}', reply=inbox, headers={KEY_HEADER: new_key(), **ANN})
        msg = await sub.next_msg(timeout=10)
        return orjson.loads(msg.data)  # type: ignore[no-any-return]

    reply = nats_driver.loop.run(ask())
    assert reply["code"] == 409 and "not accepted in state" in reply["message"], reply
