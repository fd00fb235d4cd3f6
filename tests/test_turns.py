"""The warm entities and per-key turns (esfsm/runtime/turns.py), and `esfsm run`'s options for them."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from drivers import NatsDriver
from nats_support import RuntimeProcess, start_server

from esfsm.cli import main
from esfsm.contract import answers_bucket, kv_stream
from esfsm.project import Project
from esfsm.runtime.turns import Slots


def test_slots_keep_at_most_their_capacity_least_recently_used_out() -> None:
    slots = Slots(3)
    for key in "abcd":
        slots.get(key)
    assert sorted(slots) == ["b", "c", "d"]
    slots.get("b")  # used: now the most recent
    slots.get("e")
    assert sorted(slots) == ["b", "d", "e"]
    assert slots.peek("c") is None


def test_a_slot_evicted_while_its_turn_is_held_stays_the_one_turn_of_its_key() -> None:
    async def scenario() -> None:
        slots = Slots(1)
        held = slots.get("a")
        await held.turn.acquire()
        slots.get("b")  # evicts a, whose turn is held
        assert slots.peek("a") is held and len(slots) == 2
        waiting = slots.get("a")
        assert waiting is held  # never a second turn for a
        order: list[str] = []

        async def second() -> None:
            await waiting.turn.acquire()
            order.append("second")
            slots.release(waiting)

        task = asyncio.create_task(second())
        await asyncio.sleep(0)
        order.append("first")
        slots.release(held)
        await task
        assert order == ["first", "second"]

    asyncio.run(scenario())


def test_slots_refuse_a_capacity_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1 entity"):
        Slots(0)


@pytest.mark.parametrize("args", [["--cache-entities", "0"], ["--command-window", "0"], ["--log-format", "xml"]])
def test_run_refuses_bad_cache_window_and_log_format(args: list[str]) -> None:
    result = CliRunner().invoke(main, ["run", "definitions/", *args])
    assert result.exit_code == 2, result.output
    assert "Invalid value for" in result.output


def test_run_with_a_tiny_cache_and_a_short_window_still_answers_right(tmp_path: Path, project: Project) -> None:
    """Two warm entities at most: every command on five accounts is still decided on the
    entity's latest state (read back from its snapshot and stream), and the answers bucket
    keeps answers for the window given."""
    server = start_server(tmp_path / "nats")
    runtime = RuntimeProcess(
        server.url, log=tmp_path / "run.log", extra_args=["--cache-entities", "2", "--command-window", "90"]
    ).start()
    driver = NatsDriver(project, server.url)
    try:
        keys = [f"t-{uuid.uuid4().hex[:8]}" for _ in range(5)]
        for key in keys:
            reply = driver.send(
                "bankaccount", "open_account", key, {"owner": "a", "initial_balance": 100}, {"x-username": "ann"}
            )
            assert reply["accepted"], reply
        for round_ in range(3):
            for key in keys:
                reply = driver.send(
                    "bankaccount",
                    "deposit",
                    key,
                    {"amount": 1},
                    {"x-username": "ann", "x-esfsm-command-id": f"{key}-{round_}"},
                )
                assert reply["accepted"] and reply["version"] == round_ + 2, reply
        again = driver.send(
            "bankaccount",
            "deposit",
            keys[0],
            {"amount": 1},
            {"x-username": "ann", "x-esfsm-command-id": f"{keys[0]}-0"},
        )
        assert again["version"] == 2  # the first answer, not a new deposit

        async def max_age() -> float:
            js = driver.client.nc.jetstream()
            info = await js.stream_info(kv_stream(answers_bucket("AGG_bankaccount")))
            return float(info.config.max_age or 0)

        assert driver.loop.run(max_age()) == 90
    finally:
        driver.close()
        assert runtime.terminate() == 0, runtime.log()
        server.stop()
