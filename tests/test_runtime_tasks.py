"""Structured concurrency in the runtime (runner.py, workers.py): every long-lived
task runs in a TaskGroup, one that fails stops the run, and stopping cancels and awaits them all."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

import pytest

from nats_support import run

from esfsm.errors import EsfsmError
from esfsm.runtime.runner import ConnectionLost, RunSettings, Runtime, _until_stopped, serve
from esfsm.runtime.workers import watch_parent


class Unretrieved:
    """Collects what the loop's exception handler gets (e.g. 'Task exception was never retrieved')."""

    def __init__(self) -> None:
        self.contexts: list[dict[str, Any]] = []

    def install(self) -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: self.contexts.append(context))


def test_a_task_that_fails_stops_the_runtime_and_its_error_is_retrieved(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(self: Runtime, wait: float = 0.0) -> None:
        raise RuntimeError("the task broke")

    monkeypatch.setattr(Runtime, "_compare_definitions", broken)
    unretrieved = Unretrieved()
    failures: list[BaseException] = []

    async def scenario() -> None:
        unretrieved.install()
        runtime = Runtime(nc=None, aggregates=[], on_failure=failures.append)  # type: ignore[arg-type]
        assert await runtime.open()
        for _ in range(100):
            if failures:
                break
            await asyncio.sleep(0.01)
        await runtime.stop()
        gc.collect()

    root = logging.getLogger("esfsm")  # configure_logging stops it propagating to caplog's handler
    root.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.ERROR, logger="esfsm"):
            run(scenario(), timeout=10)
    finally:
        root.removeHandler(caplog.handler)
    assert [str(error) for error in failures] == ["the task broke"]
    assert "a task of the runtime failed: RuntimeError: the task broke; stopping" in caplog.text
    assert unretrieved.contexts == []


def test_stopping_cancels_a_task_that_does_not_end_and_waits_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    ended: list[str] = []

    async def stuck(self: Runtime, wait: float = 0.0) -> None:
        try:
            await asyncio.Event().wait()  # never set: ignores stop()
        finally:
            await asyncio.sleep(0)  # cleaning up takes a turn of the loop
            ended.append("cleaned up")

    monkeypatch.setattr(Runtime, "_compare_definitions", stuck)
    failures: list[BaseException] = []

    async def scenario() -> float:
        runtime = Runtime(nc=None, aggregates=[], on_failure=failures.append)  # type: ignore[arg-type]
        await runtime.open()
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await runtime.stop(wait=0.2)
        assert ended == ["cleaned up"]  # awaited, not just asked to cancel
        return time.monotonic() - started

    assert run(scenario(), timeout=10) < 2
    assert failures == []  # cancelled on stop is no failure


def test_a_failing_task_ends_serve_with_connection_lost(nats_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit status 1, as for a lost connection, so that a supervisor restarts the runtime whole."""

    async def broken(self: Runtime, wait: float = 0.0) -> None:
        raise RuntimeError("the task broke")

    monkeypatch.setattr(Runtime, "_compare_definitions", broken)
    thresholds = gc.get_threshold()
    try:
        with pytest.raises(ConnectionLost, match=r"^a task of the runtime failed \(RuntimeError\)$"):
            run(serve([], RunSettings(servers=(nats_server.url,)), asyncio.Event()), timeout=30)
    finally:  # serving tuned the collector for the whole process
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_a_connection_error_comes_out_as_itself_not_in_an_exception_group() -> None:
    async def refused() -> Any:
        await asyncio.sleep(0)
        raise EsfsmError("cannot connect to nats://nowhere:4222: refused")

    with pytest.raises(EsfsmError, match=r"^cannot connect"):
        run(_until_stopped(refused(), asyncio.Event()), timeout=10)


def test_stopping_while_connecting_gives_up_the_attempt() -> None:
    cancelled: list[bool] = []

    async def forever() -> Any:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def scenario() -> Any:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        return await _until_stopped(forever(), stop)

    assert run(scenario(), timeout=10) is None
    assert cancelled == [True]


def test_a_worker_stops_watching_its_parent_as_soon_as_it_stops() -> None:
    async def scenario() -> float:
        stop, lost = asyncio.Event(), []
        watching = asyncio.create_task(watch_parent(stop, lost, every=30.0))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        stop.set()
        await watching
        assert lost == []
        return time.monotonic() - started

    assert run(scenario(), timeout=10) < 1.0
