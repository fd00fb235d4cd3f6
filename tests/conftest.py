"""Shared fixtures: the example definitions compiled once per session, the session's
nats-server and `esfsm run` process, and the raw clients the hostile suites talk through."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from esfsm.project import Project, load_project
from esfsm.runtime.server import EmbeddedServer

if TYPE_CHECKING:
    from drivers import NatsDriver
    from hostile_support import Isolated, Wire
    from nats_support import RuntimeProcess

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
def runtime(nats_server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    """One `esfsm run` process serving the examples and the test aggregates."""
    from nats_support import RuntimeProcess

    process = RuntimeProcess(nats_server.url, log=tmp_path_factory.mktemp("runtime") / "runtime.log").start()
    yield process
    assert process.terminate() == 0, process.log()


@pytest.fixture(scope="module")
def nats_driver(project: Project, request: pytest.FixtureRequest) -> Iterator[NatsDriver]:
    """The behaviour suite's driver of the session's runtime (tests/drivers.py). The runtime
    is asked for here, not in the signature, so that a module whose tests are parametrised
    over engines starts it only when a NATS case runs."""
    from drivers import NatsDriver

    request.getfixturevalue("runtime")
    driver = NatsDriver(project, request.getfixturevalue("nats_server").url)
    yield driver
    driver.close()


# -- the hostile suites (test_hostile_*.py): raw clients, and runtimes of their own ----------


@pytest.fixture(scope="module")
def wire(nats_server: EmbeddedServer, runtime: RuntimeProcess) -> Iterator[Wire]:
    """A raw nats-py client of the session's runtime."""
    from hostile_support import Wire

    client = Wire(nats_server.url)
    yield client
    client.close()


@pytest.fixture
def bank(wire: Wire, runtime: RuntimeProcess) -> Iterator[Wire]:
    """The session's runtime, checked to be alive and answering after the test."""
    yield wire
    wire.assert_alive(runtime)


@pytest.fixture(scope="module")
def isolated_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """A nats-server of the module's own, for runtimes that hostile input may take down."""
    from nats_support import start_server

    server = start_server(tmp_path_factory.mktemp("hostile-nats"))
    yield server
    server.stop()


@pytest.fixture
def isolated(isolated_server: EmbeddedServer, tmp_path: Path) -> Iterator[Isolated]:
    """A runtime of its own (bankaccount only) on a server of its own, killed after the test:
    for inputs that may take a runtime's connection down."""
    from hostile_support import BANKACCOUNT, Isolated, Wire
    from nats_support import RuntimeProcess

    process = RuntimeProcess(isolated_server.url, paths=[str(BANKACCOUNT)], log=tmp_path / "runtime.log").start()
    client = Wire(isolated_server.url)
    try:
        yield Isolated(client, process)
    finally:
        client.close()
        process.kill()
