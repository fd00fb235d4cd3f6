"""esfsm on secured NATS servers: every auth method, TLS, subject permissions.

Each test starts a real nats-server from a config file written in tmp_path (on
a free 127.0.0.1 port), a real `esfsm run` process that logs in with the flags
under test, and clients that are let in or turned away: the `esfsm` command
(in this process through click's runner, and once per flow as a real
subprocess) and esfsm.client.Client. Credentials are generated here: nkeys
and NATS JWTs with the `nkeys` package, a CA and certificates with `trustme`.
docs/security.md explains the configurations. Nothing is left running.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys
import pytest
import trustme
from click.testing import CliRunner

from nats_support import ROOT, RuntimeProcess, run, start_server

from esfsm.cli import main
from esfsm.client import Client
from esfsm.runtime.connection import ConnectError, ConnectOptions
from esfsm.runtime.server import EmbeddedServer

BANK = str(ROOT / "definitions" / "bankaccount.yaml")
NATS_ENV = ("NATS_URL", "NATS_USER", "NATS_PASSWORD", "NATS_TOKEN")
ENV = {k: v for k, v in os.environ.items() if k not in NATS_ENV}
OPEN = '{"owner": "ann", "initial_balance": 150}'


# -- processes ---------------------------------------------------------------------


@contextmanager
def secured(
    tmp_path: Path, config: str, runtime_args: list[str] | None = None, name: str = "run"
) -> Iterator[tuple[EmbeddedServer, RuntimeProcess | None]]:
    """A nats-server started with `-c <config>`, and (given runtime_args) an `esfsm run` logged in with them."""
    conf = tmp_path / f"{name}.conf"
    conf.write_text(config)
    server = start_server(tmp_path / f"{name}-store", extra_args=["-c", str(conf)])
    runtime = None
    try:
        if runtime_args is not None:
            runtime = RuntimeProcess(server.url, [BANK], tmp_path / f"{name}-runtime.log", runtime_args).start()
        yield server, runtime
        if runtime is not None:
            assert runtime.terminate() == 0, runtime.log()
    finally:
        if runtime is not None:
            runtime.kill()
        server.stop()


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    traceback: bool  # an exception escaped (in a subprocess: a traceback on stderr)


def esfsm(*args: str, process: bool = False, timeout: float = 30) -> Result:
    """The esfsm command: in this process (click's runner: fast), or as a real subprocess."""
    if process:
        done = subprocess.run(
            [sys.executable, "-m", "esfsm", *args],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr, "Traceback" in done.stderr)
    result = CliRunner().invoke(main, list(args), env=dict.fromkeys(NATS_ENV))
    escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
    return Result(result.exit_code, result.stdout, result.stderr, escaped)


def send(
    url: str,
    command: str,
    key: str,
    data: str,
    *auth: str,
    user: str = "ann",
    timeout: float = 5,
    process: bool = False,
) -> Result:
    headers = ["--header", f"x-username={user}"] if user else []
    return esfsm(
        "send",
        "bankaccount",
        command,
        "--key",
        key,
        "--data",
        data,
        *headers,
        "--server",
        url,
        "--timeout",
        str(timeout),
        *auth,
        process=process,
    )


def accepted(result: Result) -> dict[str, Any]:
    assert result.returncode == 0, result.stdout + result.stderr
    reply = json.loads(result.stdout)
    assert reply["accepted"] is True, reply
    return reply  # type: ignore[no-any-return]


def refused(result: Result, *expected: str) -> str:
    """A clean `Error: …` on stderr, exit 1, no traceback."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert not result.traceback, result.stderr
    assert result.stderr.startswith("Error: "), result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr
    return result.stderr


async def client_round_trip(url: str, options: ConnectOptions, key: str) -> dict[str, Any] | None:
    """With esfsm.client.Client: a deposit on key, then its state."""
    client = await Client.connect([url], options, timeout=5)
    try:
        reply = await client.send("bankaccount", "deposit", key, {"amount": 5}, headers={"x-username": "ann"})
        assert reply["accepted"] is True, reply
        return await client.state("bankaccount", key)
    finally:
        await client.close()


# -- credentials ---------------------------------------------------------------------


def new_keypair(prefix: int) -> nkeys.KeyPair:
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_jwt(issuer: nkeys.KeyPair, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A NATS JWT (v2): header and claims signed by the issuer's nkey (ed25519)."""
    claims: dict[str, Any] = {
        "jti": "",
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    digest = hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = _b64url(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64url(json.dumps(claims).encode())
    signature = issuer.sign(f"{header}.{body}".encode())
    return f"{header}.{body}.{_b64url(signature)}"


def creds_file(path: Path, user_jwt: str, seed: bytes) -> Path:
    path.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed.decode()}\n------END USER NKEY SEED------\n"
    )
    return path


@dataclass
class Method:
    """One way to log in: the server's config, and the flags (and options) of a good and a bad login."""

    config: str
    good: list[str]
    options: ConnectOptions
    bad: list[str]


def user_password(tmp_path: Path) -> Method:
    return Method(
        'authorization { users = [ {user: bank, password: "s3cret pass"} ] }\n',
        ["--user", "bank", "--password", "s3cret pass"],
        ConnectOptions(user="bank", password="s3cret pass"),
        ["--user", "bank", "--password", "wrong"],
    )


def token(tmp_path: Path) -> Method:
    return Method(
        'authorization { token: "t0k3n-of-the-bank" }\n',
        ["--token", "t0k3n-of-the-bank"],
        ConnectOptions(token="t0k3n-of-the-bank"),
        ["--token", "not-the-token"],
    )


def nkey(tmp_path: Path) -> Method:
    user, stranger = new_keypair(nkeys.PREFIX_BYTE_USER), new_keypair(nkeys.PREFIX_BYTE_USER)
    (tmp_path / "user.nk").write_bytes(user.seed + b"\n")
    (tmp_path / "stranger.nk").write_bytes(stranger.seed + b"\n")
    return Method(
        f"authorization {{ users = [ {{nkey: {user.public_key.decode()}}} ] }}\n",
        ["--nkey", str(tmp_path / "user.nk")],
        ConnectOptions(nkey_seed=str(tmp_path / "user.nk")),
        ["--nkey", str(tmp_path / "stranger.nk")],
    )


def jwt_creds(tmp_path: Path) -> Method:
    """Decentralised auth: operator → account (JetStream enabled) → user, a memory resolver."""
    operator, system = new_keypair(nkeys.PREFIX_BYTE_OPERATOR), new_keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    account, other_account = new_keypair(nkeys.PREFIX_BYTE_ACCOUNT), new_keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    op_pub, sys_pub, acc_pub = (k.public_key.decode() for k in (operator, system, account))
    unlimited = {
        "subs": -1,
        "data": -1,
        "payload": -1,
        "imports": -1,
        "exports": -1,
        "wildcards": True,
        "conn": -1,
        "leaf": -1,
        "mem_storage": -1,
        "disk_storage": -1,
        "streams": -1,
        "consumer": -1,
    }
    # JetStream needs a system account
    operator_jwt = encode_jwt(operator, op_pub, "esfsm-test-operator", {"type": "operator", "system_account": sys_pub})
    system_jwt = encode_jwt(
        operator, sys_pub, "SYS", {"type": "account", "limits": {**unlimited, "mem_storage": 0, "disk_storage": 0}}
    )
    account_jwt = encode_jwt(
        operator,
        acc_pub,
        "BANK",
        {"type": "account", "limits": unlimited, "default_permissions": {"pub": {}, "sub": {}}},
    )

    def user_creds(signer: nkeys.KeyPair, file: str) -> Path:
        user = new_keypair(nkeys.PREFIX_BYTE_USER)
        user_jwt = encode_jwt(
            signer,
            user.public_key.decode(),
            file,
            {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1},
        )
        return creds_file(tmp_path / f"{file}.creds", user_jwt, user.seed)

    good = user_creds(account, "teller")
    bad = user_creds(other_account, "intruder")  # signed by an account the server does not know
    config = (
        f"operator: {operator_jwt}\n"
        f"system_account: {sys_pub}\n"
        "resolver: MEMORY\n"
        f"resolver_preload: {{\n  {sys_pub}: {system_jwt}\n  {acc_pub}: {account_jwt}\n}}\n"
    )
    return Method(config, ["--creds", str(good)], ConnectOptions(creds=str(good)), ["--creds", str(bad)])


METHODS = {"user-password": user_password, "token": token, "nkey": nkey, "creds-jwt": jwt_creds}


@pytest.mark.parametrize("method", list(METHODS))
def test_the_runtime_and_its_clients_log_in_and_bad_credentials_are_refused(method: str, tmp_path: Path) -> None:
    login = METHODS[method](tmp_path)
    real = method == "user-password"  # the CLI as a real process once; in this process (faster) for the others
    with secured(tmp_path, login.config, login.good) as (server, _runtime):
        # the CLI with the right credentials
        reply = accepted(send(server.url, "open_account", "acc-1", OPEN, *login.good, process=real))
        assert (reply["version"], reply["state"]) == (1, "open")
        # esfsm.client.Client with the same credentials as ConnectOptions
        state = run(client_round_trip(server.url, login.options, "acc-1"), timeout=30)
        assert state is not None and state["version"] == 2 and state["data"]["balance"] == 155
        # wrong credentials, and none at all: a clear error at once, no traceback, no retry loop
        for auth in (login.bad, []):
            refused(
                send(server.url, "deposit", "acc-1", '{"amount": 1}', *auth, process=real),
                f"Error: cannot connect to {server.url}: the server refused the credentials",
            )
        with pytest.raises(ConnectError, match="refused the credentials"):
            run(Client.connect([server.url], ConnectOptions(), timeout=5), timeout=30)
        shown = esfsm("state", "bankaccount", "acc-1", "--server", server.url, *login.good, process=real)
        assert shown.returncode == 0 and json.loads(shown.stdout)["version"] == 2, shown.stderr
        if real:
            # `esfsm run` too stops at once on a refusal (nats-py would retry it forever)
            started = time.monotonic()
            refused(
                esfsm("run", BANK, "--server", server.url, *login.bad, process=True),
                f"Error: cannot connect to {server.url}: the server refused the credentials",
            )
            assert time.monotonic() - started < 15


def test_authorize_rules_over_headers_through_an_authenticated_connection(tmp_path: Path) -> None:
    login = user_password(tmp_path)
    with secured(tmp_path, login.config, login.good) as (server, _runtime):
        accepted(send(server.url, "open_account", "acc-1", OPEN, *login.good))
        for user in ("", "unauthorized"):  # no x-username header; the user the rule turns away
            result = send(server.url, "deposit", "acc-1", '{"amount": 5}', *login.good, user=user)
            assert result.returncode == 1, result.stderr
            reply = json.loads(result.stdout)
            assert (reply["accepted"], reply["code"], reply["message"]) == (False, 403, "unauthorized user")

        async def through_the_client() -> tuple[dict[str, Any], dict[str, Any] | None]:
            async with await Client.connect([server.url], login.options) as client:
                reply = await client.send(
                    "bankaccount", "withdraw", "acc-1", {"amount": 5}, headers={"x-username": "unauthorized"}
                )
                return reply, await client.state("bankaccount", "acc-1")

        reply, state = run(through_the_client(), timeout=30)
        assert (reply["accepted"], reply["code"]) == (False, 403)
        assert state is not None and (state["version"], state["data"]["balance"]) == (1, 150)  # nothing applied
        accepted(send(server.url, "deposit", "acc-1", '{"amount": 5}', *login.good, user="ann"))


# -- TLS -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate, and a CA nobody trusts."""
    folder = tmp_path_factory.mktemp("pki")
    ca, stranger = trustme.CA(), trustme.CA()
    files = {
        "ca": folder / "ca.pem",
        "stranger_ca": folder / "stranger-ca.pem",
        "server": folder / "server.pem",
        "server_key": folder / "server-key.pem",
        "client": folder / "client.pem",
        "client_key": folder / "client-key.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    stranger.cert_pem.write_to_path(str(files["stranger_ca"]))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(files["server"]))
    server.private_key_pem.write_to_path(str(files["server_key"]))
    client = ca.issue_cert("esfsm-runtime@example.com", common_name="esfsm-runtime")
    client.cert_chain_pems[0].write_to_path(str(files["client"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    return {name: str(path) for name, path in files.items()}


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_tls_with_a_private_ca_and_mutual_tls(mutual: bool, pki: dict[str, str], tmp_path: Path) -> None:
    verify = f'  ca_file: "{pki["ca"]}"\n  verify: true\n' if mutual else ""
    config = f'tls {{\n  cert_file: "{pki["server"]}"\n  key_file: "{pki["server_key"]}"\n{verify}  timeout: 2\n}}\n'
    flags = ["--tls-ca", pki["ca"]] + (["--tls-cert", pki["client"], "--tls-key", pki["client_key"]] if mutual else [])
    options = ConnectOptions(
        tls_ca=pki["ca"], tls_cert=pki["client"] if mutual else None, tls_key=pki["client_key"] if mutual else None
    )
    with secured(tmp_path, config, flags) as (server, _runtime):
        accepted(send(server.url, "open_account", "acc-1", OPEN, *flags))
        state = run(client_round_trip(server.url, options, "acc-1"), timeout=30)
        assert state is not None and state["version"] == 2
        # no CA: the system roots do not know this one; a CA that did not sign the server's certificate
        for ca in ([], ["--tls-ca", pki["stranger_ca"]]):
            client_cert = flags[2:] if mutual else []
            refused(
                send(server.url, "deposit", "acc-1", '{"amount": 1}', *ca, *client_cert),
                f"Error: cannot connect to {server.url}: TLS handshake failed",
                "CERTIFICATE_VERIFY_FAILED",
                "check --tls-ca",
            )
        if mutual:  # the server's certificate is trusted, but the client shows none
            refused(
                send(server.url, "deposit", "acc-1", '{"amount": 1}', "--tls-ca", pki["ca"]),
                f"Error: cannot connect to {server.url}: TLS handshake failed",
                "--tls-cert and --tls-key",
            )


def test_tls_options_against_a_plaintext_server_are_refused_before_any_credential(
    pki: dict[str, str], tmp_path: Path
) -> None:
    login = user_password(tmp_path)
    with secured(tmp_path, login.config) as (server, _):
        # a wrong password: had the client sent CONNECT, the server would have refused the credentials
        wrong = ConnectOptions(user="bank", password="wrong", tls_ca=pki["ca"])
        with pytest.raises(ConnectError, match="server does not require TLS; refusing a plaintext connection"):
            run(Client.connect([server.url], wrong), timeout=30)
        refused(
            esfsm("state", "bankaccount", "acc-1", "--server", server.url.replace("nats://", "tls://"), *login.good),
            "refusing a plaintext connection",
        )
        log = tmp_path / "run-store" / "nats-server.log"
        assert "authentication error" not in log.read_text()  # no CONNECT was sent
        with pytest.raises(ConnectError, match="refused the credentials"):  # without TLS options, it is
            run(Client.connect([server.url], ConnectOptions(user="bank", password="wrong")), timeout=30)
    assert "authentication error" in log.read_text()


# -- subject permissions ------------------------------------------------------------------

# What `esfsm run` needs for the bankaccount aggregate (docs/security.md derives it from the
# definition's nats: names): commands.>, the micro service's $SRV subjects, its own inboxes,
# the stream / bucket / consumer JetStream API, the events, the KV subjects and the acks.
RUNTIME_PERMISSIONS = """{
  publish: {allow: [
    "bank.events.>",
    "$KV.AGG_bankaccount.>", "$KV.AGG_bankaccount_ids.>", "$KV.AGG_bankaccount_catalog.>",
    "$JS.API.STREAM.INFO.BANK_EVENTS", "$JS.API.STREAM.CREATE.BANK_EVENTS", "$JS.API.STREAM.UPDATE.BANK_EVENTS",
    "$JS.API.STREAM.INFO.KV_AGG_bankaccount", "$JS.API.STREAM.CREATE.KV_AGG_bankaccount",
    "$JS.API.STREAM.INFO.KV_AGG_bankaccount_ids", "$JS.API.STREAM.CREATE.KV_AGG_bankaccount_ids",
    "$JS.API.STREAM.INFO.KV_AGG_bankaccount_catalog", "$JS.API.STREAM.CREATE.KV_AGG_bankaccount_catalog",
    "$JS.API.CONSUMER.DURABLE.CREATE.BANK_EVENTS.AGG_bankaccount",
    "$JS.API.CONSUMER.CREATE.BANK_EVENTS.AGG_bankaccount.>",
    "$JS.API.CONSUMER.MSG.NEXT.BANK_EVENTS.AGG_bankaccount",
    "$JS.ACK.BANK_EVENTS.AGG_bankaccount.>",
    "$JS.API.DIRECT.GET.BANK_EVENTS",
    "$JS.API.DIRECT.GET.KV_AGG_bankaccount.$KV.AGG_bankaccount.>",
    "$JS.API.DIRECT.GET.KV_AGG_bankaccount_ids.$KV.AGG_bankaccount_ids.>",
    "$JS.API.DIRECT.GET.KV_AGG_bankaccount_catalog.$KV.AGG_bankaccount_catalog.>",
    "$SRV.INFO.aggregate-bankaccount"
  ]}
  subscribe: {allow: ["bank.cmds.>", "$SRV.*", "$SRV.*.aggregate-bankaccount", "$SRV.*.aggregate-bankaccount.*",
                      "_INBOX.>"]}
  allow_responses: true
}"""
TELLER_PERMISSIONS = """{
  publish: {allow: ["$SRV.INFO.aggregate-bankaccount", "bank.cmds.deposit"]}
  subscribe: {allow: ["_INBOX.>"]}
}"""
AUDITOR_PERMISSIONS = """{
  publish: {allow: ["$SRV.INFO.aggregate-bankaccount", "$JS.API.STREAM.INFO.KV_AGG_bankaccount",
                    "$JS.API.DIRECT.GET.BANK_EVENTS", "$JS.API.DIRECT.GET.KV_AGG_bankaccount.$KV.AGG_bankaccount.>"]}
  subscribe: {allow: ["_INBOX.>"]}
}"""


def test_subject_permissions_the_runtime_needs_and_a_deposit_only_client(tmp_path: Path) -> None:
    config = (
        "authorization { users = [\n"
        f"  {{user: runtime, password: rt, permissions: {RUNTIME_PERMISSIONS}}}\n"
        f"  {{user: teller, password: te, permissions: {TELLER_PERMISSIONS}}}\n"
        f"  {{user: auditor, password: au, permissions: {AUDITOR_PERMISSIONS}}}\n"
        "  {user: admin, password: ad}\n"
        "] }\n"
    )
    runtime_login = ["--user", "runtime", "--password", "rt"]
    teller, admin = ["--user", "teller", "--password", "te"], ["--user", "admin", "--password", "ad"]
    auditor = ["--user", "auditor", "--password", "au"]
    with secured(tmp_path, config, runtime_login) as (server, _runtime):
        # a second runtime under the same user finds the stream, bucket and consumer there (update path)
        second = RuntimeProcess(server.url, [BANK], tmp_path / "second-runtime.log", runtime_login).start()
        try:
            accepted(send(server.url, "open_account", "acc-1", OPEN, *admin))
            reply = accepted(send(server.url, "deposit", "acc-1", '{"amount": 7}', *teller))
            assert reply["version"] == 2
            # withdraw is not among the teller's subjects: the server drops the request
            refused(
                send(server.url, "withdraw", "acc-1", '{"amount": 7}', *teller, timeout=1),
                "no reply to bankaccount.withdraw",
            )
            # nor open_account for another entity
            refused(send(server.url, "open_account", "acc-2", OPEN, *teller, timeout=1), "no reply")
            # the runtime answers rejections and unknown commands too (replies under allow_responses)
            rejected = send(server.url, "withdraw", "acc-1", '{"amount": 100000}', *admin)
            assert rejected.returncode == 1 and json.loads(rejected.stdout)["code"] == 422, rejected.stderr
            unknown = send(server.url, "nosuch", "acc-1", "{}", *admin)
            assert unknown.returncode == 1 and json.loads(unknown.stdout)["code"] == 404, unknown.stderr
            # the snapshot writer (durable consumer, KV) works under the runtime's permissions;
            # the auditor reads state and history (and sends nothing)
            state = esfsm("state", "bankaccount", "acc-1", "--server", server.url, *auditor)
            assert state.returncode == 0, state.stderr
            value = json.loads(state.stdout)
            assert (value["version"], value["data"]["balance"], value.get("stale")) == (2, 157, None)
            missing = esfsm("state", "bankaccount", "acc-2", "--server", server.url, *auditor)
            assert missing.returncode == 1 and "no event yet" in missing.stderr
            history = esfsm("history", "bankaccount", "acc-1", "--format", "json", "--server", server.url, *auditor)
            assert [e["type"] for e in json.loads(history.stdout)] == ["account_opened", "funds_deposited"]
            refused(send(server.url, "deposit", "acc-1", '{"amount": 7}', *auditor, timeout=1), "no reply")
        finally:
            assert second.terminate() == 0, second.log()
    log = (tmp_path / "run-store" / "nats-server.log").read_text()
    violations = [line for line in log.splitlines() if "Violation" in line]
    assert not [line for line in violations if "user:runtime" in line], "\n".join(violations)
    assert [
        line for line in violations if "user:auditor" in line and "Publish" in line and '"bank.cmds.deposit"' in line
    ], "\n".join(violations)
    assert len([line for line in violations if "user:auditor" in line]) == 1, "\n".join(violations)
    teller_violations = [line for line in violations if "user:teller" in line]
    assert any('"bank.cmds.withdraw"' in line for line in teller_violations), log
    assert any('"bank.cmds.open_account"' in line for line in teller_violations), log


def test_without_the_discovery_permission_the_runtime_only_skips_comparing_definitions(tmp_path: Path) -> None:
    """$SRV.INFO.aggregate-A is only for the start-up comparison with other runtimes: an older
    permission set without it still serves, and says once why it does not compare."""
    older = RUNTIME_PERMISSIONS.replace(',\n    "$SRV.INFO.aggregate-bankaccount"', "")
    assert older != RUNTIME_PERMISSIONS
    config = (
        "authorization { users = [\n"
        f"  {{user: runtime, password: rt, permissions: {older}}}\n"
        "  {user: admin, password: ad}\n] }\n"
    )
    with secured(tmp_path, config, ["--user", "runtime", "--password", "rt"]) as (server, runtime):
        assert runtime is not None
        accepted(send(server.url, "open_account", "acc-1", OPEN, "--user", "admin", "--password", "ad"))
        time.sleep(0.5)
        log = runtime.log()
    assert log.count("no permission to ask the other runtimes for their definitions") == 1, log
    assert "level=warning" not in log and "level=error" not in log, log


# With `--workers`, the runtime also passes commands, snapshot hand-overs and pings between its
# workers on _ESFSM.> (docs/security.md); clients never get it.
WORKERS_PERMISSIONS = RUNTIME_PERMISSIONS.replace('"bank.events.>",', '"bank.events.>", "_ESFSM.>",').replace(
    '"_INBOX.>"]}', '"_INBOX.>", "_ESFSM.>"]}'
)


def test_workers_under_subject_permissions(tmp_path: Path) -> None:
    """Two workers log in with the runtime's user (the password reaches the second one in its
    environment); commands a worker passes on are answered to the client under allow_responses;
    a client cannot publish on the workers' subjects."""
    assert WORKERS_PERMISSIONS.count("_ESFSM.>") == 2
    config = (
        "authorization { users = [\n"
        f"  {{user: runtime, password: rt, permissions: {WORKERS_PERMISSIONS}}}\n"
        f"  {{user: teller, password: te, permissions: {TELLER_PERMISSIONS}}}\n"
        "  {user: admin, password: ad}\n"
        "] }\n"
    )
    teller, admin = ["--user", "teller", "--password", "te"], ["--user", "admin", "--password", "ad"]
    with secured(tmp_path, config, ["--user", "runtime", "--password", "rt", "--workers", "2"]) as (server, runtime):
        assert runtime is not None and "worker=1 msg=ready" in runtime.log()
        keys = [f"w-{i}" for i in range(8)]
        for k in keys:
            accepted(send(server.url, "open_account", k, OPEN, *admin))
        for k in keys:  # NATS hands some to the worker that does not own the key
            assert accepted(send(server.url, "deposit", k, '{"amount": 7}', *teller))["version"] == 2

        async def sneak_in() -> None:
            import nats

            nc = await nats.connect(server.url, user="teller", password="te")
            try:
                await nc.publish(
                    "_ESFSM.g.0.cmd.bank.cmds.withdraw",
                    b'{"amount": 1}',
                    headers={"x-ergonats-entity-key": "w-0", "x-username": "ann"},
                )
                await nc.flush()
            finally:
                await nc.close()

        run(sneak_in())
        time.sleep(0.3)  # the server logs the violation
    log = (tmp_path / "run-store" / "nats-server.log").read_text()
    violations = [line for line in log.splitlines() if "Violation" in line]
    assert not [line for line in violations if "user:runtime" in line], "\n".join(violations)
    assert any("user:teller" in line and "_ESFSM.g.0.cmd.bank.cmds.withdraw" in line for line in violations), log


def test_workers_without_permission_on_their_subjects_stop_at_once_saying_why(tmp_path: Path) -> None:
    config = (
        f"authorization {{ users = [\n  {{user: runtime, password: rt, permissions: {RUNTIME_PERMISSIONS}}}\n] }}\n"
    )
    with secured(tmp_path, config) as (server, _):
        started = time.monotonic()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "esfsm",
                "run",
                BANK,
                "--server",
                server.url,
                "--user",
                "runtime",
                "--password",
                "rt",
                "--workers",
                "2",
            ],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            check=False,
        )
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started < 30  # not the 60 s wait for the other worker
    assert "the NATS user may not use _ESFSM.>" in done.stderr and "docs/security.md" in done.stderr
    assert "Error: no permission on _ESFSM.> for the workers" in done.stderr
    assert "Traceback" not in done.stderr
