"""Definitions that change under a stream, and runtimes of them in this process, for the runtime's
evolution tests (test_evolution_runtime.py, test_rolling_upgrade.py, issue #14)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from nats_support import ROOT

from esfsm import reading
from esfsm.compiler import CompiledAggregate
from esfsm.project import load_project
from esfsm.runtime.connection import ConnectOptions, connect
from esfsm.runtime.entity import Entity
from esfsm.runtime.runner import Runtime
from esfsm.runtime.service import AggregateService
from esfsm.runtime.store import AggregateStore

BANK = (ROOT / "definitions" / "bankaccount.yaml").read_text()
KEY = "x-ergonats-entity-key"


def edited(text: str, *changes: tuple[str, str]) -> str:
    """text with each (old, new) replaced once; a change that finds nothing is a broken test."""
    for old, new in changes:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def bank(tmp_path: Path, name: str, *changes: tuple[str, str]) -> tuple[Path, CompiledAggregate]:
    """The bank account definition with changes, in a folder of its own, and compiled."""
    folder = tmp_path / name
    folder.mkdir()
    path = folder / "bankaccount.yaml"
    path.write_text(edited(BANK, *changes))
    project = load_project([folder])  # DefinitionError, with every finding, when a change broke it
    return path, project.aggregates["bankaccount"]


# v2: a fixed `apply` — deposits are counted too (the data gains a field)
COUNT_DEPOSITS = (
    (
        "\ninitial_data: {balance: 0}",
        "\n    deposits: {type: integer}\ninitial_data: {balance: 0, deposits: 0}",
    ),
    (
        "apply: {balance: data.balance + event.amount}",
        "apply: {balance: data.balance + event.amount, deposits: data.deposits + 1}",
    ),
)
# v2: funds_deposited's data renamed amount -> value, at version 2, with an upcaster from 1
DEPOSIT_V2 = (
    (
        "      - event: funds_deposited\n        data: {amount: cmd.amount}",
        "      - event: funds_deposited\n        data: {value: cmd.amount}",
    ),
    (
        (
            "  funds_deposited:\n"
            "    schema: {type: object, required: [amount], properties: {amount: {type: integer}}}\n"
            "    from: open\n    apply: {balance: data.balance + event.amount}"
        ),
        (
            "  funds_deposited:\n    version: 2\n"
            "    schema: {type: object, required: [value], properties: {value: {type: integer}}}\n"
            "    from: open\n    apply: {balance: data.balance + event.value}\n"
            "    upcast:\n      - version: 1\n"
            "        schema: {type: object, required: [amount], properties: {amount: {type: integer}}}\n"
            "        data: {value: event.amount}\n        drop: [amount]"
        ),
    ),
)
# v2: the frozen state, its commands and events removed (the walk-through of issue #14)
FROZEN_EVENTS = "  account_frozen: {from: open, to: frozen}\n  account_unfrozen: {from: frozen, to: open}\n"
NO_FROZEN = (
    ("  frozen: {description: Holds its balance; no money moves until it is unfrozen.}\n", ""),
    ("  freeze:\n    emit: [{event: account_frozen}]\n  unfreeze:\n    emit: [{event: account_unfrozen}]\n", ""),
    (FROZEN_EVENTS, ""),
    ("account_closed: {from: [open, frozen], to: closed}", "account_closed: {from: open, to: closed}"),
)
# ... and the safe version: account_frozen retired, so a frozen account stays open
FROZEN_RETIRED = (
    *NO_FROZEN[:2],
    (FROZEN_EVENTS, "  account_frozen: {retired: true, from: open}\n  account_unfrozen: {retired: true, from: open}\n"),
    NO_FROZEN[3],
)


@asynccontextmanager
async def serving(url: str, compiled: CompiledAggregate) -> AsyncIterator[Runtime]:
    """A whole runtime of compiled (start-up check, services, snapshot writer) on its own connection."""
    nc = await connect([url], ConnectOptions(name=f"evolution-{compiled.state_fingerprint}"))
    runtime = Runtime(nc, [compiled])
    try:
        await runtime.start()
        yield runtime
    finally:
        await runtime.stop()
        await nc.close()


def service(runtime: Runtime) -> AggregateService:
    return runtime.services["bankaccount"]


async def send(runtime: Runtime, command: str, key: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A command to this runtime's pipeline itself (not through the queue group, which another may take)."""
    headers = {KEY: key, "x-username": "ann"}
    return await service(runtime).pipeline.process(command, json.dumps(payload).encode(), headers, key)


async def settled(
    store: AggregateStore, key: str, done: Callable[[Entity | None], bool], timeout: float = 15.0
) -> Entity | None:
    """key's snapshot once done says so (the snapshot writer works off the command path)."""
    deadline = time.monotonic() + timeout
    while True:
        snapshot, _ = await store.snapshot(key)
        if done(snapshot) or time.monotonic() > deadline:
            return snapshot
        await asyncio.sleep(0.1)


async def replayed(store: AggregateStore, compiled: CompiledAggregate, key: str) -> Any:
    """key's state: the fold of its upcast events under compiled (invariant 8's right-hand side)."""
    return reading.replay(compiled, key, await store.history(key))
