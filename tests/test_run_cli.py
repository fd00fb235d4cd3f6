"""`esfsm run` with its embedded server, and the client commands, as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DEFINITIONS
from helpers import ENV_WITHOUT_SERVER, esfsm_process

from esfsm.runtime.server import stop_process

ENV = ENV_WITHOUT_SERVER


def esfsm(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return esfsm_process(*args, cwd=cwd, timeout=timeout)


@pytest.fixture
def running(tmp_path: Path):  # type: ignore[no-untyped-def]
    """`esfsm run definitions/` in tmp_path, with no server given: it starts its own."""
    with open(tmp_path / "run.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "esfsm", "run", str(DEFINITIONS)],
            cwd=tmp_path,
            env=ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while "msg=ready" not in (tmp_path / "run.log").read_text():
            assert process.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.05)
        yield process
        stop_process(process, 30)  # SIGTERM first, so it stops its embedded server too


def test_run_serves_the_examples_on_an_embedded_server_and_drains_on_sigterm(running, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log = (tmp_path / "run.log").read_text()
    assert "started embedded nats-server" in log and "url=nats://127.0.0.1:" in log
    assert (tmp_path / ".esfsm" / "server.json").exists()
    for name in ("bankaccount", "order", "ticket"):
        assert f"aggregate={name}" in log

    sent = esfsm(
        tmp_path,
        "send",
        "bankaccount",
        "open_account",
        "--key",
        "acc-1",
        "--data",
        '{"owner": "ann", "initial_balance": 150}',
        "--header",
        "x-username=ann",
    )
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["accepted"] is True

    state = esfsm(tmp_path, "state", "bankaccount", "acc-1")
    assert state.returncode == 0, state.stderr
    value = json.loads(state.stdout)
    assert (value["state"], value["data"]["balance"], value["version"]) == ("open", 150, 1)

    refused = esfsm(
        tmp_path,
        "send",
        "bankaccount",
        "withdraw",
        "--key",
        "acc-1",
        "--data",
        '{"amount": 500}',
        "--header",
        "x-username=ann",
    )
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["code"] == 422

    (tmp_path / "payload.json").write_text('{"amount": 25}')
    from_file = esfsm(
        tmp_path,
        "send",
        "bankaccount",
        "deposit",
        "-k",
        "acc-1",
        "-d",
        "@payload.json",
        "-H",
        "x-username=ann",
        "--command-id",
        "d-1",
    )
    assert from_file.returncode == 0 and json.loads(from_file.stdout)["version"] == 2

    history = esfsm(tmp_path, "history", "bankaccount", "acc-1", "--format", "json")
    assert [e["type"] for e in json.loads(history.stdout)] == ["account_opened", "funds_deposited"]
    table = esfsm(tmp_path, "history", "bankaccount", "acc-1")
    assert "account_opened" in table.stdout and "funds_deposited" in table.stdout

    rebuilt = esfsm(tmp_path, "rebuild", "bankaccount", str(DEFINITIONS))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout.strip() == "rebuilt 1 entity of bankaccount"
    assert json.loads(esfsm(tmp_path, "state", "bankaccount", "acc-1").stdout)["data"]["balance"] == 175

    markup = esfsm(
        tmp_path,
        "send",
        "bankaccount",
        "open_account",
        "--key",
        "acc-m",
        "--header",
        "x-username=ann",
        "--data",
        '{"owner": "[/bold] [red]x", "initial_balance": 150}',
    )
    assert markup.returncode == 0, markup.stderr
    shown = esfsm(tmp_path, "history", "bankaccount", "acc-m")  # stored text is shown as is, never as markup
    assert shown.returncode == 0 and '"owner": "[/bold] [red]x"' in shown.stdout, shown.stdout + shown.stderr
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", shown.stdout)  # piped: the time is not cut

    running.send_signal(signal.SIGTERM)
    assert running.wait(30) == 0
    log = (tmp_path / "run.log").read_text()
    assert (
        "msg=draining" in log and 'msg="stopped embedded nats-server"' in log and log.rstrip().endswith("msg=stopped")
    )
    assert "level=warning" not in log and "level=error" not in log  # a clean drain is no news
    assert not (tmp_path / ".esfsm" / "server.json").exists()


def test_client_commands_say_clearly_when_nothing_runs(tmp_path: Path) -> None:
    result = esfsm(tmp_path, "state", "bankaccount", "acc-1")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: no NATS server given and no embedded server running under .esfsm/")
    assert "Traceback" not in result.stderr


def test_send_rejects_bad_arguments_as_usage_errors(tmp_path: Path) -> None:
    bad_json = esfsm(tmp_path, "send", "bankaccount", "deposit", "--key", "a", "--data", "{nope")
    assert bad_json.returncode == 2 and "Invalid value for '--data': not valid JSON" in bad_json.stderr
    bad_header = esfsm(tmp_path, "send", "bankaccount", "deposit", "--key", "a", "--header", "novalue")
    assert bad_header.returncode == 2 and "'novalue' is not NAME=VALUE" in bad_header.stderr
    no_time = esfsm(tmp_path, "send", "bankaccount", "deposit", "--key", "a", "--timeout", "0")
    assert no_time.returncode == 2 and "Invalid value for '--timeout'" in no_time.stderr
    not_a_number = esfsm(tmp_path, "send", "bankaccount", "deposit", "--key", "a", "--expected-version", "abc")
    assert not_a_number.returncode == 2 and "'abc' is not a valid integer." in not_a_number.stderr
    (tmp_path / "latin1.json").write_bytes(b'{"owner": "\xe9"}')
    for args, message in [
        (["--data", '{"amount": NaN}'], "not valid JSON: NaN is not JSON"),
        (["--data", "@latin1.json"], "'latin1.json' is not UTF-8 text"),
        (["--data", "@"], "give a file name after '@'"),
        (["--header", "x y=1"], "'x y' is not a header name"),
        (["--header", "x-a=1\r\nx-username: ann"], "the value of 'x-a' holds a line break"),
        (["--command-id", "a\nb"], "Invalid value for '--command-id': holds a line break"),
        (["--timeout", "nan"], "'nan' is not a finite number"),
    ]:
        refused = esfsm(tmp_path, "send", "bankaccount", "deposit", "--key", "a", *args)
        assert refused.returncode == 2 and message in refused.stderr, (args, refused.stderr)
        assert "Traceback" not in refused.stderr


def test_run_drains_on_sighup_like_a_closed_terminal(running, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    running.send_signal(signal.SIGHUP)
    assert running.wait(30) == 0
    log = (tmp_path / "run.log").read_text()
    assert "msg=draining" in log and log.rstrip().endswith("msg=stopped")
    assert not (tmp_path / ".esfsm" / "server.json").exists()  # and its server stopped with it


def test_the_client_refuses_arguments_it_cannot_send_before_sending() -> None:
    import datetime as dt

    from esfsm.client import Client

    client = Client(None)  # type: ignore[arg-type]  # nothing reaches a connection
    for kwargs, error, message in [
        ({"headers": {"x-username": 5}}, TypeError, "header 'x-username': names and values must be strings, got int 5"),
        ({"headers": [("x-username", "a")]}, TypeError, "headers must be a mapping of strings"),
        ({"command_id": 5}, TypeError, "the command_id must be a string, got int 5"),
        ({"data": {"amount": float("nan")}}, ValueError, "the payload is not JSON"),
        (
            {"data": {"at": dt.datetime(2025, 1, 1, tzinfo=dt.UTC)}},
            TypeError,
            "the payload is not JSON: Object of type datetime",
        ),
    ]:
        with pytest.raises(error, match=message):
            asyncio.run(client.send("bankaccount", "deposit", "b1", **kwargs))
    with pytest.raises(TypeError, match="the key must be a string, got int 5"):
        asyncio.run(client.send("bankaccount", "deposit", 5))  # type: ignore[arg-type]


def test_send_reports_unknown_aggregate_and_command(running, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    unknown = esfsm(tmp_path, "send", "bankacount", "deposit", "--key", "a")
    assert unknown.returncode == 1
    assert (
        "no runtime serves aggregate 'bankacount'" in unknown.stderr and "did you mean 'bankaccount'?" in unknown.stderr
    )
    for command in ("state", "history"):  # a wildcard key would read every entity's events
        for bad in ("*", "a.b"):
            refused = esfsm(tmp_path, command, "bankaccount", bad)
            assert refused.returncode == 1 and "invalid entity key" in refused.stderr, (command, bad, refused.stderr)
    for command in ("state", "history"):
        lost = esfsm(tmp_path, command, "bankaccount", "acc-1", "--js-domain", "bogus")
        assert lost.returncode == 1 and "JetStream does not answer" in lost.stderr and "--js-domain" in lost.stderr
        assert "internal error" not in lost.stderr and len(lost.stderr.strip().splitlines()) == 1, lost.stderr
    nothing = esfsm(tmp_path, "history", "bankaccount", "never-opened")
    assert nothing.returncode == 1 and "has no event yet" in nothing.stderr
    spaced = esfsm(tmp_path, "send", "bank account", "deposit", "--key", "a")
    assert spaced.returncode == 1 and "invalid aggregate name 'bank account'" in spaced.stderr
    (tmp_path / "big.json").write_text('{"amount": "' + "x" * 1_100_000 + '"}')
    big = esfsm(tmp_path, "send", "bankaccount", "deposit", "--key", "a", "--data", "@big.json")
    assert big.returncode == 1 and "more than the server takes in one message" in big.stderr, big.stderr
    other = esfsm(tmp_path, "state", "savings", "a")
    assert other.returncode == 1
    assert "the runtimes on this server serve 'bankaccount', 'order', 'ticket'" in other.stderr, other.stderr
    wrong = esfsm(tmp_path, "send", "bankaccount", "withdrw", "--key", "a")
    assert wrong.returncode == 1
    assert json.loads(wrong.stdout)["message"].endswith("did you mean 'withdraw'?")


def test_run_refuses_to_start_on_invalid_definitions(tmp_path: Path) -> None:
    broken = tmp_path / "defs"
    broken.mkdir()
    (broken / "bank.yaml").write_text((DEFINITIONS / "bankaccount.yaml").read_text().replace("to: frozen", "to: frozn"))
    result = esfsm(tmp_path, "run", str(broken))
    assert result.returncode == 1
    assert "'frozn' is not a declared state; did you mean 'frozen'?" in result.stdout
    assert result.stderr.strip() == "Error: the definitions have errors; not starting"
    assert not (tmp_path / ".esfsm").exists()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_run_waits_for_an_unreachable_server_says_so_and_stops_on_sigterm(tmp_path: Path, workers: str) -> None:
    """It keeps trying (it may start before its server), says so, and a signal ends it at once."""
    from nats_support import ephemeral_port

    url = f"nats://127.0.0.1:{ephemeral_port()}"  # nothing listens there
    with open(tmp_path / "run.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "esfsm", "run", str(DEFINITIONS), "--server", url, "--workers", workers],
            cwd=tmp_path,
            env=ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while "still trying" not in (tmp_path / "run.log").read_text():
            assert process.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        text = (tmp_path / "run.log").read_text()
        assert f"still trying {url}" in text and "stopped before connecting" in text
        assert "Traceback" not in text
    finally:
        if process.poll() is None:
            process.kill()


def test_run_says_clearly_when_the_server_has_no_jetstream(tmp_path: Path) -> None:
    from nats_support import ephemeral_port

    from esfsm.runtime.server import server_binary

    port = ephemeral_port()
    server = subprocess.Popen(
        [server_binary(), "-a", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )  # no -js
    try:
        deadline = time.monotonic() + 10
        while True:  # until it listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        done = esfsm(tmp_path, "run", str(DEFINITIONS), "--server", f"nats://127.0.0.1:{port}", timeout=30)
        assert done.returncode == 1
        assert "Error: JetStream does not answer on this NATS server" in done.stderr
        assert "start nats-server with -js" in done.stderr
        assert "Traceback" not in done.stderr and "level=error" not in done.stderr
    finally:
        stop_process(server, 10)


def test_a_second_run_in_the_same_folder_does_not_start_a_second_server_on_the_store(running, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = json.loads((tmp_path / ".esfsm" / "server.json").read_text())["url"]
    second = esfsm(tmp_path, "run", str(DEFINITIONS), timeout=30)
    assert second.returncode == 1
    assert f"already runs with the store .esfsm ({url})" in second.stderr
    assert f"--server {url}" in second.stderr
    assert running.poll() is None  # the first one is untouched
    assert json.loads((tmp_path / ".esfsm" / "server.json").read_text())["url"] == url


def test_a_stale_server_file_does_not_stop_the_embedded_server_from_starting(tmp_path: Path) -> None:
    from nats_support import ephemeral_port

    from esfsm.runtime.server import EmbeddedServer

    store = tmp_path / "store"
    store.mkdir()
    # left by a crash: the pid is this test's own (alive), the URL answers nothing
    (store / "server.json").write_text(json.dumps({"url": f"nats://127.0.0.1:{ephemeral_port()}", "pid": os.getpid()}))
    server = EmbeddedServer(store, port=ephemeral_port()).start()
    try:
        assert json.loads((store / "server.json").read_text())["url"] == server.url
    finally:
        server.stop()


def test_run_says_when_the_port_asked_for_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = esfsm(tmp_path, "run", str(DEFINITIONS), "--port", str(port), timeout=30)
    assert done.returncode == 1
    assert f"Error: port {port} on 127.0.0.1 is in use: give another --port" in done.stderr


@pytest.mark.parametrize(
    "content",
    [
        "[]",
        '{"url": 5}',
        '{"url": "nats://127.0.0.1:1", "pid": 0}',
        '{"url": "nats://127.0.0.1:1", "pid": -1}',
        '{"url": "nats://127.0.0.1:1", "pid": 1e400}',
        '{"url": "nats://127.0.0.1:1", "pid": "1"}',
        "not json",
    ],
)
def test_a_damaged_server_file_reads_as_no_server(tmp_path: Path, content: str) -> None:
    from esfsm.runtime.server import embedded_url

    (tmp_path / "server.json").write_text(content)
    assert embedded_url(tmp_path) is None
    result = esfsm(tmp_path, "state", "bankaccount", "a", "--store-dir", str(tmp_path))
    assert result.returncode == 1 and "no embedded server running" in result.stderr, result.stderr


def test_run_refuses_bad_servers_ports_and_store_folders_before_starting_anything(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    cases = [
        (["--port", "70000"], 2, "70000 is not in the range 0<=x<=65535"),
        (["--server", "nats://127.0.0.1:4222", "--port", "5555"], 2, "with --server no server is started"),
        (["--server", "http://127.0.0.1:4222"], 1, "'http://127.0.0.1:4222' is not a NATS server URL"),
        (["--store-dir", "afile"], 1, "cannot use 'afile' as the store folder: it is a file"),
        (["--store-dir", "afile/sub"], 1, "cannot use 'afile/sub' as the store folder: Not a directory"),
    ]
    for args, code, message in cases:
        result = esfsm(tmp_path, "run", str(DEFINITIONS), *args, timeout=30)
        assert result.returncode == code and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no store folder left behind
    client = subprocess.run(
        [sys.executable, "-m", "esfsm", "state", "bankaccount", "a"],
        cwd=tmp_path,
        env={**ENV, "NATS_URL": "http://127.0.0.1:4222"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert client.returncode == 1 and "is not a NATS server URL" in client.stderr


def test_rebuild_never_creates_a_stream_for_a_definition_the_runtime_does_not_serve(running, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    import nats

    typo = tmp_path / "typo"
    typo.mkdir()
    text = (DEFINITIONS / "bankaccount.yaml").read_text()
    (typo / "bankaccount.yaml").write_text(
        text.replace("stream: BANK_EVENTS", "stream: TYPO_EVENTS").replace(
            "bucket: AGG_bankaccount", "bucket: AGG_typo"
        )
    )
    refused = esfsm(tmp_path, "rebuild", "bankaccount", str(typo))
    assert refused.returncode == 1
    assert "there is no stream 'TYPO_EVENTS' on this server, so nothing to rebuild" in refused.stderr

    async def streams() -> list[str]:
        nc = await nats.connect(json.loads((tmp_path / ".esfsm" / "server.json").read_text())["url"])
        try:
            return [s.config.name for s in await nc.jetstream().streams_info()]
        finally:
            await nc.close()

    assert "TYPO_EVENTS" not in asyncio.run(streams()) and "KV_AGG_typo" not in asyncio.run(streams())
    (tmp_path / "empty").mkdir()
    empty = esfsm(tmp_path, "rebuild", "bankaccount", str(tmp_path / "empty"))
    assert empty.returncode == 1 and "no definitions under" in empty.stderr


def test_a_runtime_warns_when_another_serves_its_aggregate_from_a_different_definition(tmp_path: Path) -> None:
    from nats_support import RuntimeProcess, start_server

    from esfsm.model import fingerprint
    from esfsm.project import load_project

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    text = (DEFINITIONS / "bankaccount.yaml").read_text()
    (tmp_path / "a" / "bankaccount.yaml").write_text(text)
    (tmp_path / "b" / "bankaccount.yaml").write_text(
        text.replace("cmd.amount <= data.balance", "cmd.amount <= data.balance + 100")
    )
    # the same meaning however the file is laid out; a changed rule is another definition
    assert fingerprint(load_project([tmp_path / "a"]).aggregates["bankaccount"].model) == fingerprint(
        load_project([DEFINITIONS / "bankaccount.yaml"]).aggregates["bankaccount"].model
    )
    assert fingerprint(load_project([tmp_path / "a"]).aggregates["bankaccount"].model) != fingerprint(
        load_project([tmp_path / "b"]).aggregates["bankaccount"].model
    )

    server = start_server(tmp_path / "nats")
    runtimes = []
    try:
        for name in ("a", "a", "b"):
            runtimes.append(RuntimeProcess(server.url, [str(tmp_path / name)], tmp_path / f"{name}{len(runtimes)}.log"))
            runtimes[-1].start()
            time.sleep(1.0)  # its comparison takes half a second
        same, different = runtimes[1].log(), runtimes[2].log()
        assert "level=warning" not in same, same
        assert "another runtime serves aggregate 'bankaccount' from a different definition" in different, different
    finally:
        for runtime in runtimes:
            runtime.terminate()
        server.stop()
