"""The wire contract, checked with a raw nats-py client and nothing from esfsm.

This module imports no esfsm code: an existing client of the ergonats seed
(or any NATS client) must be able to drive bankaccount from the contract in
DESIGN.md alone. The fixtures only start the server and the runtime.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import nats
import pytest

from nats_support import run

pytestmark = pytest.mark.usefixtures("runtime")
KEY = "x-ergonats-entity-key"


async def request(nc: Any, command: str, key: str | None, payload: bytes, **headers: str) -> tuple[dict, dict]:
    all_headers = {"x-username": "ann", **headers}
    if key is not None:
        all_headers[KEY] = key
    msg = await nc.request(f"bank.cmds.{command}", payload, timeout=10, headers=all_headers)
    return json.loads(msg.data), dict(msg.headers or {})


def test_commands_events_and_state_follow_the_contract(nats_server: Any) -> None:
    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)
        key = f"wire-{uuid.uuid4().hex[:8]}"
        reply, headers = await request(nc, "open_account", key, b'{"owner": "ann", "initial_balance": 150}')
        assert reply["accepted"] is True and reply["message"]
        assert (reply["version"], reply["state"]) == (1, "open")
        assert [e["type"] for e in reply["events"]] == ["account_opened"]
        assert "Nats-Service-Error" not in headers

        # The event: CloudEvents structured JSON on bank.events.<key>.<type> in BANK_EVENTS.
        js = nc.jetstream()
        stored = await js.get_last_msg("BANK_EVENTS", f"bank.events.{key}.account_opened")
        assert stored.headers["Content-Type"] == "application/cloudevents+json"
        event = json.loads(stored.data)
        assert event["specversion"] == "1.0" and event["type"] == "account_opened"
        assert event["entitykey"] == key and event["aggversion"] == 1
        assert event["data"] == {"owner": "ann", "balance": 150}
        assert event["id"] == reply["events"][0]["id"]
        info = await js.stream_info("BANK_EVENTS")
        assert info.config.subjects == ["bank.events.>"]
        assert info.config.allow_direct and info.config.allow_atomic

        # The state: KV bucket AGG_bankaccount, key = entity key (written off the hot path).
        kv = await js.key_value("AGG_bankaccount")
        for _ in range(100):
            try:
                value = json.loads((await kv.get(key)).value)
                break
            except nats.js.errors.KeyNotFoundError:
                await asyncio.sleep(0.05)
        assert {k: value[k] for k in ("version", "key", "state", "data")} == {
            "version": 1,
            "key": key,
            "state": "open",
            "data": {"owner": "ann", "balance": 150},
        }
        assert value["seq"] == stored.seq

        # The durable consumer of the seed.
        consumer = await js.consumer_info("BANK_EVENTS", "AGG_bankaccount")
        assert consumer.config.durable_name == "AGG_bankaccount"
        assert consumer.config.filter_subject == "bank.events.>"
        assert consumer.config.headers_only  # the snapshot writer needs subjects and sequences only
        await nc.close()

    run(scenario())


@pytest.mark.parametrize(
    ("command", "key", "payload", "headers", "code"),
    [
        ("deposit", None, b'{"amount": 1}', {}, "400"),
        ("deposit", "a.b", b'{"amount": 1}', {}, "400"),
        ("deposit", "k-json", b"{not json", {}, "400"),
        ("deposit", "k-utf8", b'{"amount": "\xff"}', {}, "400"),
        ("open_account", "k-schema", b'{"owner": "", "initial_balance": 150}', {}, "400"),
        ("open_account", "k-auth", b'{"owner": "a", "initial_balance": 150}', {"x-username": "unauthorized"}, "403"),
        ("no_such_command", "k-404", b"{}", {}, "404"),
        ("deposit", "k-409", b'{"amount": 1}', {}, "409"),
        ("open_account", "k-422", b'{"owner": "a", "initial_balance": 5}', {}, "422"),
        ("open_account", "k-ver", b'{"owner": "a", "initial_balance": 150}', {"x-esfsm-expected-version": "3"}, "409"),
    ],
    ids=[
        "no-key",
        "dotted-key",
        "bad-json",
        "bad-utf8",
        "schema",
        "authorize",
        "unknown-command",
        "wrong-state",
        "rule",
        "expected-version",
    ],
)
def test_rejections_carry_code_errors_and_micro_error_headers(
    nats_server: Any, command: str, key: str | None, payload: bytes, headers: dict[str, str], code: str
) -> None:
    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)
        reply, reply_headers = await request(nc, command, key and f"{key}-{uuid.uuid4().hex[:6]}", payload, **headers)
        assert reply["accepted"] is False
        assert reply["code"] == int(code)
        assert reply["message"] and isinstance(reply["errors"], list)
        assert reply_headers["Nats-Service-Error-Code"] == code
        assert reply_headers["Nats-Service-Error"] == reply["message"]
        await nc.close()

    run(scenario())


def test_schema_rejection_points_at_each_field(nats_server: Any) -> None:
    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)
        reply, _ = await request(nc, "open_account", f"p-{uuid.uuid4().hex[:6]}", b'{"owner": 7}')
        assert [e["path"] for e in reply["errors"]] == ["/initial_balance", "/owner"]
        await nc.close()

    run(scenario())


def test_command_id_retry_is_answered_as_the_first_time(nats_server: Any) -> None:
    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)
        key = f"id-{uuid.uuid4().hex[:6]}"
        await request(nc, "open_account", key, b'{"owner": "a", "initial_balance": 150}')
        first, _ = await request(nc, "deposit", key, b'{"amount": 7}', **{"x-esfsm-command-id": "dep-1"})
        again, _ = await request(nc, "deposit", key, b'{"amount": 7}', **{"x-esfsm-command-id": "dep-1"})
        assert first == again and first["version"] == 2
        info = await nc.jetstream().stream_info("BANK_EVENTS", subjects_filter=f"bank.events.{key}.>")
        assert sum(info.state.subjects.values()) == 2
        await nc.close()

    run(scenario())


def test_service_discovery_lists_endpoints_with_schemas(nats_server: Any) -> None:
    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)
        ping = json.loads((await nc.request("$SRV.PING.aggregate-bankaccount", b"", timeout=5)).data)
        assert ping["name"] == "aggregate-bankaccount"
        info = json.loads((await nc.request("$SRV.INFO.aggregate-bankaccount", b"", timeout=5)).data)
        endpoints = {e["name"]: e for e in info["endpoints"]}
        assert set(endpoints) == {"open_account", "deposit", "withdraw", "freeze", "unfreeze", "close"}
        deposit = endpoints["deposit"]
        assert deposit["subject"] == "bank.cmds.deposit" and deposit["queue_group"] == "bankaccount"
        assert json.loads(deposit["metadata"]["schema"])["required"] == ["amount"]
        stats = json.loads((await nc.request("$SRV.STATS.aggregate-bankaccount", b"", timeout=5)).data)
        assert {e["name"] for e in stats["endpoints"]} == set(endpoints)
        await nc.close()

    run(scenario())
