"""Shared fixtures: the example definitions, compiled once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from esfsm.project import Project, load_project
from esfsm.runtime.server import EmbeddedServer

ROOT = Path(__file__).resolve().parent.parent
DEFINITIONS = ROOT / "definitions"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def project() -> Project:
    """The examples in definitions/ plus the test-only aggregate in fixtures/valid/."""
    return load_project([DEFINITIONS, FIXTURES / "valid"])


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """One nats-server with JetStream for the session, on a free port, with a temporary store."""
    from nats_support import start_server

    server = start_server(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def runtime(nats_server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One `esfsm run` process serving the examples and the test aggregates."""
    from nats_support import RuntimeProcess

    process = RuntimeProcess(nats_server.url, log=tmp_path_factory.mktemp("runtime") / "runtime.log").start()
    yield process
    assert process.terminate() == 0, process.log()
