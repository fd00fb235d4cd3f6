"""Each kind of definition change on a real server (issue #14, "Done when"): history written by
a runtime serving v1, that runtime stopped, a runtime serving v2 started on the same server and
store, and a command decided on the fold of the upcast events under v2 — in its reply, and in
the KV snapshot (rewritten under v2's state fingerprint). Then the walk-through of the issue's
"Why": bank account acc-1 frozen, and the frozen state removed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from helpers import ENV_WITHOUT_SERVER, esfsm_process
from nats_support import ROOT, RuntimeProcess, run, start_server

from esfsm import reading
from esfsm.client import Client
from esfsm.compiler import CompiledAggregate
from esfsm.project import load_project
from esfsm.values import EntityState

ENV = ENV_WITHOUT_SERVER

Step = tuple[str, str, dict[str, Any]]  # command, key, payload


@dataclass(frozen=True)
class Change:
    """One kind of change: v1 and v2 of one aggregate, the history sent to v1, the command
    sent to v2, what its reply must say, and the entity afterwards."""

    v1: str
    v2: str
    history: tuple[Step, ...]
    command: Step
    reply: dict[str, Any]  # a subset of the reply
    after: tuple[str, dict[str, Any], int]  # state, data (a subset), version

    @property
    def aggregate(self) -> str:
        return self.v1.split("\n", 1)[0].removeprefix("aggregate: ")


ADD_A_FIELD = Change(
    v1="""\
aggregate: evo_field
initial: none
states: {none: {}, open: {}}
initial_data: {balance: 0}
commands:
  open: {emit: [{event: opened, data: {owner: cmd.owner}}]}
  deposit: {emit: [{event: deposited, data: {amount: cmd.amount}}]}
events:
  opened:
    schema: {type: object, required: [owner], properties: {owner: {type: string}}}
    from: none
    to: open
    apply: {owner: event.owner}
  deposited: {from: open, apply: {balance: data.balance + event.amount}}
""",
    # opened gains a currency: version 2, and version 1 events (all in euros) read with it
    v2="""\
aggregate: evo_field
initial: none
states: {none: {}, open: {}}
initial_data: {balance: 0}
commands:
  open: {emit: [{event: opened, data: {owner: cmd.owner, currency: cmd.currency}}]}
  deposit:
    rules: [{rule: "data.currency == 'EUR'", message: only euro accounts take deposits}]
    emit: [{event: deposited, data: {amount: cmd.amount}}]
events:
  opened:
    version: 2
    schema:
      type: object
      required: [owner, currency]
      properties: {owner: {type: string}, currency: {type: string}}
    from: none
    to: open
    apply: {owner: event.owner, currency: event.currency}
    upcast:
      - version: 1
        schema: {type: object, required: [owner], properties: {owner: {type: string}}}
        data: {currency: "'EUR'"}
  deposited: {from: open, apply: {balance: data.balance + event.amount}}
""",
    history=(("open", "f-1", {"owner": "ann"}), ("deposit", "f-1", {"amount": 10})),
    command=("deposit", "f-1", {"amount": 5}),
    reply={"accepted": True, "state": "open", "version": 3},
    after=("open", {"owner": "ann", "currency": "EUR", "balance": 15}, 3),
)

RENAME_AN_EVENT = Change(
    v1="""\
aggregate: evo_rename
initial: none
states: {none: {}, open: {}}
initial_data: {balance: 0}
commands:
  open: {emit: [{event: opened}]}
  deposit: {emit: [{event: deposited, data: {amount: cmd.amount}}]}
  withdraw:
    rules: [{rule: cmd.amount <= data.balance, message: insufficient funds}]
    emit: [{event: withdrawn, data: {amount: cmd.amount}}]
events:
  opened: {from: none, to: open}
  deposited: {from: open, apply: {balance: data.balance + event.amount}}
  withdrawn: {from: open, apply: {balance: data.balance - event.amount}}
""",
    # deposited is renamed credited; the events stored as deposited stay under that name
    v2="""\
aggregate: evo_rename
initial: none
states: {none: {}, open: {}}
initial_data: {balance: 0}
commands:
  open: {emit: [{event: opened}]}
  deposit: {emit: [{event: credited, data: {amount: cmd.amount}}]}
  withdraw:
    rules: [{rule: cmd.amount <= data.balance, message: insufficient funds}]
    emit: [{event: withdrawn, data: {amount: cmd.amount}}]
events:
  opened: {from: none, to: open}
  credited:
    formerly: [deposited]
    from: open
    apply: {balance: data.balance + event.amount}
  withdrawn: {from: open, apply: {balance: data.balance - event.amount}}
""",
    history=(("open", "r-1", {}), ("deposit", "r-1", {"amount": 10}), ("deposit", "r-1", {"amount": 20})),
    command=("withdraw", "r-1", {"amount": 30}),  # the whole balance, all of it deposited under the old name
    reply={"accepted": True, "state": "open", "version": 4},
    after=("open", {"balance": 0}, 4),
)

SPLIT_A_STATE = Change(
    v1="""\
aggregate: evo_split
initial: none
states: {none: {}, open: {}, closed: {}}
commands:
  create: {emit: [{event: created}]}
  close: {emit: [{event: closed}]}
events:
  created: {from: none, to: open}
  closed: {from: open, to: closed}
""",
    # closed is split into resolved and rejected; every ticket closed before counts as resolved
    v2="""\
aggregate: evo_split
initial: none
states: {none: {}, open: {}, resolved: {}, rejected: {}}
commands:
  create: {emit: [{event: created}]}
  resolve: {emit: [{event: resolved}]}
  reject: {emit: [{event: rejected}]}
  reopen: {emit: [{event: reopened}]}
events:
  created: {from: none, to: open}
  resolved: {from: open, to: resolved}
  rejected: {from: open, to: rejected}
  reopened: {from: resolved, to: open, apply: {reopened: true}}
  closed: {retired: true, from: open, to: resolved}
""",
    history=(("create", "s-1", {}), ("close", "s-1", {})),
    command=("reopen", "s-1", {}),  # accepted only in resolved: where the old close leads under v2
    reply={"accepted": True, "state": "open", "version": 3},
    after=("open", {"reopened": True}, 3),
)

RETIRE_A_COMMAND = Change(
    v1="""\
aggregate: evo_retire
initial: none
states: {none: {}, open: {}}
initial_data: {balance: 0}
commands:
  open: {emit: [{event: opened}]}
  bonus: {emit: [{event: bonus_paid, data: {amount: 50}}]}
  withdraw:
    rules: [{rule: cmd.amount <= data.balance, message: insufficient funds}]
    emit: [{event: withdrawn, data: {amount: cmd.amount}}]
events:
  opened: {from: none, to: open}
  bonus_paid: {from: open, apply: {balance: data.balance + event.amount}}
  withdrawn: {from: open, apply: {balance: data.balance - event.amount}}
""",
    # the bonus command is gone; the bonuses paid still count
    v2="""\
aggregate: evo_retire
initial: none
states: {none: {}, open: {}}
initial_data: {balance: 0}
commands:
  open: {emit: [{event: opened}]}
  withdraw:
    rules: [{rule: cmd.amount <= data.balance, message: insufficient funds}]
    emit: [{event: withdrawn, data: {amount: cmd.amount}}]
events:
  opened: {from: none, to: open}
  bonus_paid: {retired: true, from: open, apply: {balance: data.balance + event.amount}}
  withdrawn: {from: open, apply: {balance: data.balance - event.amount}}
""",
    history=(("open", "c-1", {}), ("bonus", "c-1", {}), ("bonus", "c-1", {})),
    command=("withdraw", "c-1", {"amount": 100}),
    reply={"accepted": True, "state": "open", "version": 4},
    after=("open", {"balance": 0}, 4),
)

FIX_AN_APPLY = Change(
    v1="""\
aggregate: evo_fix
initial: none
states: {none: {}, open: {}}
commands:
  open: {emit: [{event: opened, data: {balance: cmd.balance}}]}
  withdraw:
    rules: [{rule: cmd.amount <= data.balance, message: insufficient funds}]
    emit: [{event: withdrawn, data: {amount: cmd.amount}}]
events:
  opened: {from: none, to: open, apply: {balance: event.balance}}
  withdrawn: {from: open, apply: {balance: data.balance + event.amount}}
""",
    # the wrong sign fixed: every snapshot computed by the old apply is wrong, and is refreshed
    v2="""\
aggregate: evo_fix
initial: none
states: {none: {}, open: {}}
commands:
  open: {emit: [{event: opened, data: {balance: cmd.balance}}]}
  withdraw:
    rules: [{rule: cmd.amount <= data.balance, message: insufficient funds}]
    emit: [{event: withdrawn, data: {amount: cmd.amount}}]
events:
  opened: {from: none, to: open, apply: {balance: event.balance}}
  withdrawn: {from: open, apply: {balance: data.balance - event.amount}}
""",
    history=(("open", "x-1", {"balance": 100}), ("withdraw", "x-1", {"amount": 30})),  # v1 snapshot: 130
    command=("withdraw", "x-1", {"amount": 100}),  # fine on 130, refused on the fold under v2: 70
    reply={"accepted": False, "code": 422, "message": "insufficient funds"},
    after=("open", {"balance": 70}, 2),
)

CHANGES = {
    "add a field": ADD_A_FIELD,
    "rename an event": RENAME_AN_EVENT,
    "split a state": SPLIT_A_STATE,
    "retire a command": RETIRE_A_COMMAND,
    "fix an apply": FIX_AN_APPLY,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    nats = start_server(tmp_path_factory.mktemp("evolution-nats"))
    yield nats.url
    nats.stop()


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(text)
    return folder


def compiled(folder: Path, name: str) -> CompiledAggregate:
    return load_project([folder]).aggregates[name]


def serving(url: str, folder: Path, log: Path) -> RuntimeProcess:
    return RuntimeProcess(url, [str(folder)], log).start()


async def send(url: str, aggregate: str, steps: tuple[Step, ...]) -> list[dict[str, Any]]:
    async with await Client.connect([url], timeout=10) as client:
        return [await client.send(aggregate, command, key, data) for command, key, data in steps]


async def snapshot_under(url: str, compiled: CompiledAggregate, key: str, wait: float = 10.0) -> dict[str, Any]:
    """The entity's KV snapshot once it reflects its last event and was written under compiled's
    state fingerprint (or what it holds after wait seconds)."""
    async with await Client.connect([url], timeout=10) as client:
        last = len(await client.history(compiled.name, key))
        kv = await client.nc.jetstream().key_value(compiled.model.nats.bucket)
        deadline = time.monotonic() + wait
        while True:
            value: dict[str, Any] = orjson.loads((await kv.get(key)).value or b"{}")
            done = value.get("version") == last and value.get("fp") == compiled.state_fingerprint
            if done or time.monotonic() > deadline:
                return value
            await asyncio.sleep(0.05)


async def fold_of_stored(url: str, compiled: CompiledAggregate, key: str) -> EntityState:
    """The entity's state under compiled: the fold of its stored events, upcast (reading.py)."""
    async with await Client.connect([url], timeout=10) as client:
        stored = [{k: v for k, v in e.items() if k != "seq"} for e in await client.history(compiled.name, key)]
    return reading.replay(compiled, key, stored)


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_a_command_after_the_change_is_decided_on_the_fold_of_the_upcast_events(
    change: Change, server: str, tmp_path: Path
) -> None:
    name = change.aggregate
    v1 = write(tmp_path / "v1", name, change.v1)
    v2 = write(tmp_path / "v2", name, change.v2)
    first = serving(server, v1, tmp_path / "v1.log")
    try:
        replies = run(send(server, name, change.history))
    finally:
        assert first.terminate() == 0, first.log()
    assert all(r["accepted"] for r in replies), replies

    second = serving(server, v2, tmp_path / "v2.log")
    try:
        (reply,) = run(send(server, name, (change.command,)))
        snapshot = run(snapshot_under(server, compiled(v2, name), change.command[1]))
        fold = run(fold_of_stored(server, compiled(v2, name), change.command[1]))
    finally:
        assert second.terminate() == 0, second.log()
    assert {k: reply.get(k) for k in change.reply} == change.reply, reply
    state, data, version = change.after
    assert (fold.state, fold.version) == (state, version)
    assert {k: fold.data.get(k) for k in data} == data, fold
    assert (snapshot.get("state"), snapshot.get("data"), snapshot.get("version")) == (
        fold.state,
        dict(fold.data),
        fold.version,
    ), snapshot
    assert snapshot.get("fp") == compiled(v2, name).state_fingerprint, snapshot  # written under v2
    for log in ("v1.log", "v2.log"):
        assert "Traceback" not in (tmp_path / log).read_text()


def test_a_removed_command_is_no_longer_served_after_the_change(server: str, tmp_path: Path) -> None:
    """Retiring a command: clients that still send it are told the aggregate has no such command."""
    name = RETIRE_A_COMMAND.aggregate
    v2 = write(tmp_path / "v2", name, RETIRE_A_COMMAND.v2)
    runtime = serving(server, v2, tmp_path / "v2.log")
    try:
        (reply,) = run(send(server, name, (("bonus", "c-2", {}),)))
    finally:
        assert runtime.terminate() == 0, runtime.log()
    assert (reply["accepted"], reply["code"]) == (False, 404), reply
    assert reply["message"] == "unknown command 'bonus' for aggregate 'evo_retire'", reply


# -- the walk-through of the "Why" --------------------------------------------------

BANKACCOUNT = (ROOT / "definitions" / "bankaccount.yaml").read_text()


def without_frozen(covered: bool) -> str:
    """bankaccount with the frozen state, freeze, unfreeze and (unless covered) their events
    removed; covered keeps the events, retired, mapped onto open: a frozen account stays open."""
    text = BANKACCOUNT.replace("debited, frozen and closed", "debited and closed")
    text = text.replace("  frozen: {description: Holds its balance; no money moves until it is unfrozen.}\n", "")
    text = text.replace("  freeze:\n    emit: [{event: account_frozen}]\n", "")
    text = text.replace("  unfreeze:\n    emit: [{event: account_unfrozen}]\n", "")
    text = text.replace(
        "account_closed: {from: [open, frozen], to: closed}", "account_closed: {from: open, to: closed}"
    )
    retired = (
        "  account_frozen: {retired: true, from: open}\n  account_unfrozen: {retired: true, from: open}\n"
        if covered
        else ""
    )
    text = text.replace(
        "  account_frozen: {from: open, to: frozen}\n  account_unfrozen: {from: frozen, to: open}\n", retired
    )
    assert "frozen" not in text.replace("account_frozen", "").replace("account_unfrozen", "")
    assert ("account_frozen" in text) is covered
    return text


def esfsm(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return esfsm_process(*args, cwd=ROOT, timeout=timeout)


@pytest.fixture
def frozen_acc_1(tmp_path: Path) -> Iterator[str]:
    """A server of its own where a runtime serving definitions/bankaccount.yaml opened acc-1
    with 150, froze, unfroze and froze it again (so both event types are stored), then stopped."""
    nats = start_server(tmp_path / "nats")
    try:
        first = serving(nats.url, write(tmp_path / "v1", "bankaccount", BANKACCOUNT), tmp_path / "v1.log")
        try:
            history = (
                ("open_account", "acc-1", {"owner": "ann", "initial_balance": 150}),
                ("freeze", "acc-1", {}),
                ("unfreeze", "acc-1", {}),
                ("freeze", "acc-1", {}),
            )
            replies = run(send_as_ann(nats.url, history))
        finally:
            assert first.terminate() == 0, first.log()
        assert [r["accepted"] for r in replies] == [True] * 4 and replies[-1]["state"] == "frozen", replies
        yield nats.url
    finally:
        nats.stop()


def test_the_walk_through_run_refuses_a_v2_that_cannot_replay_the_frozen_account(
    frozen_acc_1: str, tmp_path: Path
) -> None:
    """v2 without the frozen state, freeze, unfreeze and their events is a valid definition, but
    `esfsm run` refuses to serve it: one clear error naming both event types, exit 1, no traceback."""
    uncovered = write(tmp_path / "v2-uncovered", "bankaccount", without_frozen(covered=False))
    assert esfsm("validate", str(uncovered)).returncode == 0  # the definition alone is valid
    code, output = start_or_refuse(uncovered, frozen_acc_1, tmp_path / "refused.log")
    assert code == 1, output
    assert "account_frozen" in output and "account_unfrozen" in output, output
    assert "Traceback" not in output, output


def test_the_walk_through_v2_with_the_events_retired_onto_open_decides_the_deposit(
    frozen_acc_1: str, tmp_path: Path
) -> None:
    """v2 that keeps account_frozen and account_unfrozen, retired, both from open (the frozen
    state is gone: a frozen account stays open): the deposit is accepted in open, and the
    balance is the old one plus the deposit."""
    covered = write(tmp_path / "v2-covered", "bankaccount", without_frozen(covered=True))
    second = serving(frozen_acc_1, covered, tmp_path / "v2.log")
    try:
        sent = esfsm(
            "send",
            "bankaccount",
            "deposit",
            "--key",
            "acc-1",
            "--data",
            '{"amount": 25}',
            "-H",
            "x-username=ann",
            "--server",
            frozen_acc_1,
        )
        state = esfsm("state", "bankaccount", "acc-1", "--server", frozen_acc_1)
    finally:
        assert second.terminate() == 0, second.log()
    assert sent.returncode == 0, sent.stdout + sent.stderr
    reply = orjson.loads(sent.stdout)
    assert (reply["accepted"], reply["state"], reply["version"]) == (True, "open", 5), reply
    value = orjson.loads(state.stdout)
    assert (value["state"], value["data"]["balance"], value["version"]) == ("open", 175, 5), value
    assert "Traceback" not in sent.stderr + state.stderr + (tmp_path / "v2.log").read_text()


def start_or_refuse(folder: Path, url: str, log: Path, timeout: float = 30) -> tuple[int | None, str]:
    """`esfsm run folder`: its exit code and output when it stops by itself, or (None, its output)
    when it starts serving instead (then it is killed)."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "esfsm", "run", str(folder), "--server", url],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=ENV,
            cwd=ROOT,
        )
        deadline = time.monotonic() + timeout
        try:
            while process.poll() is None and "msg=ready" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
    return (None if process.returncode < 0 else process.returncode), log.read_text()


async def send_as_ann(url: str, steps: tuple[Step, ...]) -> list[dict[str, Any]]:
    async with await Client.connect([url], timeout=10) as client:
        return [
            await client.send("bankaccount", command, key, data, headers={"x-username": "ann"})
            for command, key, data in steps
        ]
