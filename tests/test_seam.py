"""esfsm/seam.py: the one module that touches private names of nats-py, nats.micro and cloudevents.

Each private name the seam relies on has a test here that fails naming the name and
the library when an upgrade takes it away (or changes the signature the seam calls);
one more test fails, listing file:line, when any other module of esfsm touches such
a name itself.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from esfsm import seam

ROOT = Path(__file__).resolve().parent.parent
NATS = f"nats-py {metadata.version('nats-py')}"
CLOUDEVENTS = f"cloudevents {metadata.version('cloudevents')}"


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def needs(target: Any, name: str, library: str) -> Any:
    """target's attribute name, or a failure saying that library no longer has it."""
    owner = target if isinstance(target, type) else type(target)
    assert hasattr(target, name), (
        f"{library} no longer has {owner.__module__}.{owner.__qualname__}.{name}, "
        "which esfsm/seam.py relies on: see its docstring there"
    )
    return getattr(target, name)


def needs_call(target: Any, name: str, library: str, parameters: list[str], coroutine: bool = True) -> None:
    """target.name exists, is (or not) a coroutine function, and takes parameters (after self)."""
    method = needs(target, name, library)
    found = [p for p in inspect.signature(method).parameters if p != "self"]
    assert found == parameters, (
        f"{library}: {target.__qualname__}.{name} now takes {found}, esfsm/seam.py calls it with {parameters}"
    )
    assert inspect.iscoroutinefunction(method) == coroutine, (
        f"{library}: {target.__qualname__}.{name} has changed between a coroutine function and a plain one; "
        "esfsm/seam.py relies on which it is"
    )


def source_says(target: Any, fragment: str, library: str, why: str) -> None:
    assert fragment in inspect.getsource(target), (
        f"{library}: {target.__qualname__} no longer contains {fragment!r}; esfsm/seam.py relies on it: {why}"
    )


# -- versions -------------------------------------------------------------------------------------


def test_the_installed_dependencies_are_the_tested_series() -> None:
    seam.check_installed()  # it ran at import too, or nothing here would have imported
    assert set(seam.TESTED) == {"nats-py", "cloudevents"}


@pytest.mark.parametrize(
    ("package", "installed"),
    [
        ("nats-py", "2.17.0"),
        ("nats-py", "2.15.3"),
        ("nats-py", "3.16.0"),
        ("nats-py", "2.160.1"),
        ("cloudevents", "2.3.0"),
        ("cloudevents", "1.11.0"),
    ],
)
def test_an_untested_version_fails_naming_the_package_the_version_and_the_range(package: str, installed: str) -> None:
    with pytest.raises(seam.UntestedDependencyError) as caught:
        seam.check_version(package, installed)
    series = "{}.{}.x".format(*seam.TESTED[package])
    assert str(caught.value).startswith(f"{package} {installed} is installed, ")
    assert series in str(caught.value)
    assert (caught.value.package, caught.value.installed) == (package, installed)
    assert isinstance(caught.value, seam.EsfsmError)


@pytest.mark.parametrize("installed", ["2.16.0", "2.16.7", "2.16.1rc1", "2.16"])
def test_a_release_of_the_tested_series_passes(installed: str) -> None:
    seam.check_version("nats-py", installed)


# -- nats-py: Client, incoming ----------------------------------------------------------------------


def test_nats_py_client__process_msg() -> None:
    from nats.aio.client import Client
    from nats.protocol.parser import Parser

    needs_call(Client, "_process_msg", NATS, ["sid", "subject", "reply", "data", "headers"])
    source_says(Parser.parse, "self.nc._process_msg(", NATS, "intercept_messages replaces what the parser calls")


def test_nats_py_client__process_headers() -> None:
    from nats.aio.client import Client

    needs_call(Client, "_process_headers", NATS, ["headers"])
    parsed = run(Client()._process_headers(b"NATS/1.0 503\r\n\r\n"))
    assert parsed == {"Status": "503"}, f"{NATS}: Client._process_headers reads status lines differently: {parsed}"


def test_nats_py_client__process_info() -> None:
    from nats.aio.client import Client

    needs_call(Client, "_process_info", NATS, ["info", "initial_connection"])
    source_says(
        Client._process_connect_init,
        "_process_info(srv_info, initial_connection=True)",
        NATS,
        "check_server_info sees the INFO of each (re)connect before CONNECT",
    )


def test_nats_py_client__process_ping_and__process_pong() -> None:
    from nats.aio.client import Client

    needs_call(Client, "_process_ping", NATS, [])
    needs_call(Client, "_process_pong", NATS, [])


def test_nats_py_client__process_err() -> None:
    from nats.aio.client import Client

    needs_call(Client, "_process_err", NATS, ["err_msg"])


def test_nats_py_client__ps() -> None:
    from nats.aio.client import Client
    from nats.protocol.parser import Parser

    assert isinstance(needs(Client(), "_ps", NATS), Parser)
    source_says(Client._read_loop, "self._ps.parse(", NATS, "install_parser's parser reads every chunk")
    source_says(Client, "self._ps.reset()", NATS, "the parser starts afresh at each reconnect")


def test_nats_py_parser_state_the_lean_parser_keeps() -> None:
    """LeanParser (wire.py) subclasses nats-py's Parser and keeps its state in its attributes."""
    from nats.protocol import parser

    instance = parser.Parser(None)
    for name in ("nc", "buf", "state", "needed", "header_needed", "msg_arg", "reset"):
        needs(instance, name, NATS)
    for name in ("AWAITING_CONTROL_LINE", "AWAITING_MSG_PAYLOAD"):
        needs(parser, name, NATS)
    assert instance.state == parser.AWAITING_CONTROL_LINE


# -- nats-py: Client, outgoing ----------------------------------------------------------------------


def test_nats_py_client__pending_and__pending_data_size() -> None:
    from nats.aio.client import Client

    nc = Client()
    assert needs(nc, "_pending", NATS) == [], f"{NATS}: Client._pending is no longer a list"
    assert needs(nc, "_pending_data_size", NATS) == 0
    source_says(Client._send_command, "self._pending.append(cmd)", NATS, "enqueue appends the same way")
    source_says(Client._send_command, "self._pending_data_size += len(cmd)", NATS, "enqueue counts the same way")


def test_nats_py_client__flush_queue() -> None:
    from nats.aio.client import Client

    needs(Client(), "_flush_queue", NATS)
    source_says(Client._flusher, "await self._flush_queue.get()", NATS, "enqueue wakes the flusher with a future")


def test_nats_py_client__transport__disconnected_cb__closed_cb_and_transport__io_writer() -> None:
    from nats.aio.client import Client
    from nats.aio.transport import TcpTransport

    nc = Client()
    for name in ("_transport", "_disconnected_cb", "_closed_cb"):
        needs(nc, name, NATS)
    needs(TcpTransport(), "_io_writer", NATS)


def test_nats_py_subscription__id() -> None:
    from nats.aio.client import Client
    from nats.aio.subscription import Subscription

    assert needs(Subscription(Client(), id=7), "_id", NATS) == 7


# -- nats-py: nats.micro ---------------------------------------------------------------------------


def test_nats_micro_service__endpoints() -> None:
    from nats.micro.service import Service

    source_says(Service.__init__, "self._endpoints = []", NATS, "micro_endpoints lists them")
    source_says(Service.add_endpoint, "self._endpoints.append(", NATS, "micro_endpoints lists them")


def test_nats_micro_endpoint__subscription_and__num_requests() -> None:
    from nats.micro.service import Endpoint, EndpointConfig, Service

    async def handler(request: Any) -> None:
        pass

    endpoint = Endpoint(None, EndpointConfig(name="x", handler=handler))  # type: ignore[arg-type]
    assert needs(endpoint, "_subscription", NATS) is None
    assert needs(endpoint, "_num_requests", NATS) == 0
    source_says(Service.stats, "num_requests=endpoint._num_requests", NATS, "count_request shows in $SRV.STATS")


def test_micro_endpoints_route_and_count_on_a_real_service(nats_server: Any) -> None:
    import nats
    from nats.micro import add_service
    from nats.micro.service import EndpointConfig, ServiceConfig

    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)

        async def handler(request: Any) -> None:
            await request.respond(b"ok")

        service = await add_service(nc, ServiceConfig(name="seam-probe", version="0.0.1"))
        await service.add_endpoint(EndpointConfig(name="probe", subject="seam.probe", handler=handler))
        endpoints = list(seam.micro_endpoints(service))
        assert len(endpoints) == 1
        subscription = endpoints[0].subscription
        assert subscription is not None and subscription.subject == "seam.probe"
        endpoints[0].count_request()
        endpoints[0].count_request()
        stats = json.loads((await nc.request("$SRV.STATS.seam-probe", b"", timeout=5)).data)
        assert [e["num_requests"] for e in stats["endpoints"]] == [2]
        await service.stop()
        assert endpoints[0].subscription is None
        assert list(seam.micro_endpoints(service)) == []
        await nc.close()

    run(scenario())


# -- cloudevents -------------------------------------------------------------------------------------


def test_cloudevents_cloud_event__attributes_and__data() -> None:
    import datetime as dt

    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent

    attributes = {
        "id": "1",
        "source": "esfsm/x",
        "type": "t",
        "specversion": "1.0",
        "time": dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
        "entitykey": "k",
    }
    checked = CloudEvent(dict(attributes), {"a": 1})
    assert set(vars(checked)) == {"_attributes", "_data"}, (
        f"{CLOUDEVENTS}: CloudEvent now holds {sorted(vars(checked))}, esfsm/seam.py's unchecked_event sets "
        "_attributes and _data only"
    )
    unchecked = seam.unchecked_event(CloudEvent, dict(attributes), {"a": 1})
    assert (unchecked.get_attributes(), unchecked.get_data()) == (checked.get_attributes(), checked.get_data())
    assert JSONFormat().write(unchecked) == JSONFormat().write(checked)


# -- nobody else touches them ------------------------------------------------------------------------

PRIVATE = [
    (
        r"\b(?!self\b|cls\b)\w+\)?\._(pending\w*|endpoints|subscription|num_requests|attributes|pre|process_\w+|"
        r"transport|max_payload|flush_queue|ps|io_writer|closed_cb|disconnected_cb|esfsm_\w+)\b"
    ),
    r"\b(nc|client|sub|subscription|msg|kv|js|service|endpoint|event|transport|parser)\._\w+",
    r"\bsuper\(\)\._process_\w+",
]


def private_accesses(text: str) -> list[tuple[int, str]]:
    patterns = [re.compile(p) for p in PRIVATE]
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if any(p.search(line) for p in patterns)
    ]


def test_the_access_pattern_catches_what_it_should() -> None:
    caught = [
        "nc._pending.append(x)",
        "for e in self.service._endpoints:",
        "e._subscription",
        "kv._pre",
        "event._attributes = a",
        "await super()._process_info(i)",
        "transport._io_writer = None",
        "nc._process_msg = f",
        "endpoint._num_requests += 1",
        "self.nc._max_payload",
        "sub._id",
    ]
    missed = [
        "self._pending = []",
        "self._endpoints",
        "cls._failed(node)",
        "type(err).__name__",
        "Client._parse_header_lines in a docstring",
    ]
    assert [line for line in caught if not private_accesses(line)] == []
    assert [line for line in missed if private_accesses(line)] == []


def test_only_the_seam_touches_private_names_of_nats_py_nats_micro_and_cloudevents() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line}"
        for path in sorted((ROOT / "esfsm").rglob("*.py"))
        if path.name != "seam.py"
        for number, line in private_accesses(path.read_text())
    ]
    assert not found, "go through esfsm/seam.py instead:\n" + "\n".join(found)
