"""Real nats-server and runtime processes for the integration tests.

A server runs on a free 127.0.0.1 port with a temporary store; a runtime is a
real `esfsm run --server URL` process. Nothing is left running afterwards.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from esfsm.runtime.server import EmbeddedServer, die_with_parent, stop_process
from esfsm.runtime.testing import LoopThread  # noqa: F401  (tests use it from here)

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
RUNTIME_PATHS = [str(ROOT / "definitions"), str(ROOT / "tests" / "fixtures" / "valid")]


def ephemeral_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(store: Path, port: int | None = None, extra_args: list[str] | None = None) -> EmbeddedServer:
    return EmbeddedServer(store, port=port or ephemeral_port(), extra_args=extra_args or []).start()


# `ready` from the process itself (with --workers, worker 0), not from a worker it started
_READY = re.compile(r"^(?!.*\bworker=[1-9]).*\bmsg=ready\b", re.MULTILINE)


class RuntimeProcess:
    """`esfsm run --server URL` in a child process; ready once it logs 'ready'."""

    def __init__(
        self, url: str, paths: list[str] | None = None, log: Path | None = None, extra_args: list[str] | None = None
    ) -> None:
        self.url = url
        self.paths = paths or RUNTIME_PATHS
        self.log_path = log
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> RuntimeProcess:
        assert self.log_path is not None
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - open while the process runs: terminate() and kill() close it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "esfsm", "run", *self.paths, "--server", self.url, *self.extra_args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if k != "NATS_URL"},
            preexec_fn=die_with_parent,  # noqa: PLW1509 - it only calls prctl, safe between fork and exec
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"runtime exited {self.process.returncode}:\n{self.log_path.read_text()}")
            if _READY.search(self.log_path.read_text()):
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"runtime not ready within {timeout}s:\n{self.log_path.read_text()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path else ""

    def terminate(self, timeout: float = 15.0) -> int:
        if self.process is None:
            return 0
        code = stop_process(self.process, timeout)
        self.process = None
        self._log.close()
        return code

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
            self._log.close()


def unknown(reply: dict[str, Any] | None) -> bool:
    """No reply, or a 503: the command may or may not have been stored."""
    return reply is None or (not reply["accepted"] and reply["code"] == 503)


def run(coroutine: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
    """asyncio.run with a bound: a test that would hang fails instead, showing where it waited."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


class Cluster:
    """A JetStream cluster of nats-server processes on loopback, each with a store of its own."""

    def __init__(self, nodes: list[EmbeddedServer]) -> None:
        self.nodes = nodes

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def node(self, name: str) -> EmbeddedServer:
        """The node whose --server_name is name."""
        for node in self.nodes:
            if node.extra_args[node.extra_args.index("--server_name") + 1] == name:
                return node
        raise KeyError(name)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(store: Path, size: int = 3, name: str = "esfsm-test") -> Cluster:
    """size nats-server processes (`-js`, nodes n1..n<size>) routed to each other on free
    127.0.0.1 ports, stores under store/n<i>. They are started, not yet clustered: wait for
    a JetStream meta leader (wait_for_jetstream) before creating replicated streams."""
    ports: set[int] = set()
    while len(ports) < 2 * size:
        ports.add(ephemeral_port())
    client_ports, route_ports = list(ports)[:size], list(ports)[size:]
    nodes = []
    for i in range(size):
        routes = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(route_ports) if j != i)
        nodes.append(
            EmbeddedServer(
                store / f"n{i + 1}",
                port=client_ports[i],
                extra_args=[
                    "--server_name",
                    f"n{i + 1}",
                    "--cluster_name",
                    name,
                    "--cluster",
                    f"nats://127.0.0.1:{route_ports[i]}",
                    "--routes",
                    routes,
                ],
            )
        )
    cluster = Cluster(nodes)
    try:
        for node in nodes:
            node.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


async def wait_for_jetstream(urls: list[str], timeout: float = 30.0) -> None:
    """Until every node answers $JS.API.INFO (a JetStream meta leader is elected)."""
    import nats

    deadline = time.monotonic() + timeout
    for url in urls:
        nc = await nats.connect(url)
        try:
            while True:
                try:
                    await nc.jetstream(timeout=1).account_info()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
        finally:
            await nc.close()
