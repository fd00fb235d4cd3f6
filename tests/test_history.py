"""`esfsm history` on a real server (issue #14): each event's stored type and version, and with
--definitions the form the definition reads it in (upcast), or why it cannot."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import invoke
from nats_support import ROOT, RuntimeProcess, run, start_server

from esfsm.cli import main
from esfsm.client import Client
from esfsm.events import event_to_dict, new_event
from esfsm.project import load_project
from esfsm.runtime.connection import ConnectOptions, connect
from esfsm.runtime.jetstream import Outgoing
from esfsm.runtime.store import AggregateStore

UPCAST = ROOT / "tests" / "fixtures" / "upcast"
KEY = "led-h"
NOW = dt.datetime(2025, 1, 1, 9, tzinfo=dt.UTC)


def old_event(event_type: str, version: int, data: dict[str, Any], aggversion: int, extension: bool = True) -> bytes:
    """An event as an older definition stored it; without `extension`, as stored before events
    carried `eventversion` at all."""
    document = event_to_dict(new_event("ledger", event_type, KEY, aggversion, data, NOW, event_version=version))
    if not extension:
        del document["eventversion"]
    return json.dumps(document).encode()


OLD = [
    ("ledger_opened", old_event("ledger_opened", 1, {"owner": "ann"}, 1, extension=False)),
    ("money_added", old_event("money_added", 1, {"amount": 3}, 2)),
    ("ledger_frozen", old_event("ledger_frozen", 1, {}, 3)),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server whose ledger led-h holds three events of older definitions and one of today's,
    served by a runtime of the ledger definition while the module runs."""
    folder = tmp_path_factory.mktemp("history")
    nats = start_server(folder / "nats")
    runtime = RuntimeProcess(nats.url, [str(UPCAST / "ledger.yaml")], folder / "runtime.log")
    try:
        runtime.start()
        run(_store_history(nats.url))
        yield nats.url
        assert runtime.terminate() == 0, runtime.log()
    finally:
        runtime.kill()
        nats.stop()


async def _store_history(url: str) -> None:
    compiled = load_project([UPCAST]).aggregates["ledger"]
    nc = await connect([url], ConnectOptions(name="history-test"))
    try:
        store = AggregateStore(nc, compiled)
        await store.ensure()
        outgoing = [Outgoing(store.subject(KEY, t), body, json.loads(body)["id"]) for t, body in OLD]
        await store.append(KEY, 0, outgoing)
    finally:
        await nc.close()
    async with await Client.connect([url], timeout=10) as client:
        reply = await client.send("ledger", "credit", KEY, {"cents": 5})
        state = await client.state("ledger", KEY, wait=5)
    assert reply["accepted"] and reply["version"] == 4, reply
    assert state is not None and state["data"]["cents"] == 305, state  # the fold of the upcast events


def history(url: str, *args: str) -> tuple[int, str]:
    result = invoke(main, "history", "ledger", KEY, "--server", url, *args)
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def test_history_shows_each_event_as_stored_with_its_version(server: str) -> None:
    code, out = history(server, "--format", "json")
    assert code == 0, out
    events = json.loads(out)
    assert [(e["type"], e["eventversion"], e["data"]) for e in events] == [
        ("ledger_opened", 1, {"owner": "ann"}),  # stored without the extension: version 1
        ("money_added", 1, {"amount": 3}),
        ("ledger_frozen", 1, {}),
        ("credited", 2, {"cents": 5}),
    ]
    assert all("read" not in e for e in events)
    code, table = history(server)
    assert code == 0, table
    assert "event version" in table and "read as" not in table
    row = next(line for line in table.splitlines() if "money_added" in line)
    assert '{"amount": 3}' in row and " 1 " in row, row


def test_history_with_the_definitions_shows_each_event_upcast_too(server: str) -> None:
    code, out = history(server, "--format", "json", "--definitions", str(UPCAST))
    assert code == 0, out
    events = json.loads(out)
    assert [e["type"] for e in events] == ["ledger_opened", "money_added", "ledger_frozen", "credited"]  # stored
    assert [e["read"] for e in events] == [
        {"type": "ledger_opened", "eventversion": 2, "data": {"owner": "ann", "currency": "EUR"}},
        {"type": "credited", "eventversion": 2, "data": {"cents": 300}},
        {"type": "ledger_frozen", "eventversion": 1, "data": {}},
        {"type": "credited", "eventversion": 2, "data": {"cents": 5}},
    ]
    code, table = history(server, "--definitions", str(UPCAST / "ledger.yaml"))
    assert code == 0, table
    row = next(line for line in table.splitlines() if "money_added" in line)
    assert "credited v2" in row and '{"cents": 300}' in row and '{"amount": 3}' in row, row


def test_history_names_what_a_definition_cannot_read(server: str, tmp_path: Path) -> None:
    """The definition before the rename (no `formerly`): money_added cannot be read, and says why;
    the events after it are still shown as read."""
    before = (UPCAST / "ledger.yaml").read_text().replace("    formerly: [money_added]\n", "")
    (tmp_path / "ledger.yaml").write_text(before)
    code, out = history(server, "--format", "json", "--definitions", str(tmp_path))
    assert code == 0, out
    reads = [e["read"] for e in json.loads(out)]
    assert set(reads[1]) == {"error"} and "'money_added'" in reads[1]["error"], reads[1]
    assert "unknown event type" in reads[1]["error"]
    assert reads[3] == {"type": "credited", "eventversion": 2, "data": {"cents": 5}}
    code, table = history(server, "--definitions", str(tmp_path))
    row = next(line for line in table.splitlines() if "money_added" in line)
    assert "(cannot read)" in row and "unknown event type" in row, row


def test_history_refuses_definitions_without_the_aggregate_before_connecting(tmp_path: Path) -> None:
    result = invoke(main, "history", "ledger", KEY, "--server", "nats://127.0.0.1:1", "--definitions", "definitions")
    assert result.exit_code == 1, result.output
    assert "unknown aggregate 'ledger'" in result.output and "definitions under definitions" in result.output
    assert "Traceback" not in result.output
