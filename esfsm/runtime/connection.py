"""How the runtime and the clients reach NATS: options, and the embedded server."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client

from esfsm import seam
from esfsm.errors import EsfsmError
from esfsm.runtime.server import embedded_url
from esfsm.runtime.wire import LeanParser

log = logging.getLogger("esfsm.connection")
DEFAULT_STORE = Path(".esfsm")


class ConnectError(EsfsmError):
    """No NATS server could be reached with the given options."""


@dataclass(frozen=True)
class ConnectOptions:
    """The usual NATS connection settings (all optional)."""

    servers: tuple[str, ...] = ()
    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkey_seed: str | None = None  # path of a file holding an nkey seed
    creds: str | None = None  # path of a .creds file (JWT + seed)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    js_domain: str | None = None
    name: str = "esfsm"

    def tls_context(self) -> ssl.SSLContext | None:
        if not (self.tls_ca or self.tls_cert):
            return None
        context = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        return context

    def for_worker(self) -> tuple[list[str], dict[str, str]]:
        """The `esfsm run` arguments and environment that give a worker process these options
        (secrets go in the environment, never on a command line that `ps` shows)."""
        args: list[str] = []
        for flag, value in (
            ("--nkey", self.nkey_seed),
            ("--creds", self.creds),
            ("--tls-ca", self.tls_ca),
            ("--tls-cert", self.tls_cert),
            ("--tls-key", self.tls_key),
            ("--js-domain", self.js_domain),
        ):
            if value is not None:
                args += [flag, str(value)]
        env = {
            name: value
            for name, value in (("NATS_USER", self.user), ("NATS_PASSWORD", self.password), ("NATS_TOKEN", self.token))
            if value is not None
        }
        return args, env

    def connect_kwargs(self) -> dict[str, Any]:
        # pending_size=0: while disconnected a publish fails at once instead of being
        # buffered and sent after the reconnect, when its command may have been answered 503.
        kwargs: dict[str, Any] = {
            "name": self.name,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "pending_size": 0,
        }
        if self.user is not None:
            kwargs["user"], kwargs["password"] = self.user, self.password
        if self.token is not None:
            kwargs["token"] = self.token
        if self.nkey_seed is not None:
            kwargs["nkeys_seed"] = self.nkey_seed
        if self.creds is not None:
            kwargs["user_credentials"] = self.creds
        tls = self.tls_context()
        if tls is not None:
            kwargs["tls"] = tls
        return kwargs


async def gather_answers(nc: Client, subjects: Iterable[str], wait: float) -> list[bytes]:
    """The answers to an empty request on each subject that arrive within wait seconds, from
    however many responders (micro discovery: `$SRV.PING`, `$SRV.INFO.<service>`)."""
    answers: list[bytes] = []

    async def collect(msg: Any) -> None:
        answers.append(msg.data)

    sub = await nc.subscribe(inbox := nc.new_inbox(), cb=collect)
    try:
        for subject in subjects:
            await nc.publish(subject, b"", reply=inbox)
        await asyncio.sleep(wait)
    finally:
        await sub.unsubscribe()
    return answers


SCHEMES = ("nats", "tls", "ws", "wss")


def check_server_urls(urls: list[str] | tuple[str, ...]) -> list[str]:
    """urls, if each is one nats-py can dial (nats://, tls://, ws://, wss://, or host:port);
    ConnectError naming the first that is not."""
    for url in urls:
        scheme, sep, rest = url.partition("://")
        if (sep and scheme.lower() not in SCHEMES) or not (rest if sep else url) or any(c.isspace() for c in url):
            raise ConnectError(f"{url!r} is not a NATS server URL: write nats://host:4222 (or tls://, ws://, wss://)")
    return list(urls)


def resolve_servers(explicit: tuple[str, ...] | list[str], store_dir: Path = DEFAULT_STORE) -> list[str] | None:
    """--server, else NATS_URL, else the embedded server `esfsm run` started here; None if none."""
    if explicit:
        return check_server_urls(explicit)
    env = os.environ.get("NATS_URL")
    if env:
        return check_server_urls([s.strip() for s in env.split(",") if s.strip()])
    url = embedded_url(store_dir)
    return [url] if url else None


# Refusals that retrying cannot cure: the server turned the credentials down, or the TLS
# handshake failed (unknown CA, wrong host name, no client certificate…).
_AUTH_MARKERS = ("authorization violation", "authentication", "authorization failed", "user credentials")


class _Refused(Exception):
    """Raised from the error callback to stop nats-py's initial connect loop."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PlaintextRefused(nats.errors.Error):
    """TLS was asked for, and the server does not require it."""

    def __str__(self) -> str:
        return (
            "TLS options were given but the server does not require TLS; refusing a plaintext "
            "connection (configure `tls {...}` on the server)"
        )


# What nats-py raises inside its read loop on some header blocks from any publisher (a bare
# `NATS/1.0`, a status that is not UTF-8, …): the loop would stop, leaving the runtime deaf
# until a reconnect minutes later. Such a message arrives with no headers instead (a command
# without its entity key: a 400).
_BAD_HEADERS = (IndexError, UnicodeDecodeError, ValueError, KeyError)


def _client(tls_only: bool) -> Client:
    """A nats-py client that reads with the lean parser of wire.py and survives a malformed
    header block; with tls_only, one that refuses, before sending CONNECT (and any
    credential), a server whose INFO does not require TLS (nats-py would otherwise carry on
    in plaintext)."""
    nc = Client()
    seam.install_parser(nc, LeanParser(nc))
    seam.tolerate_bad_headers(nc, _BAD_HEADERS)
    if tls_only:
        seam.check_server_info(nc, _require_tls)
    return nc


def _require_tls(info: dict[str, Any]) -> None:
    if not info.get("tls_required"):
        raise PlaintextRefused()


def _refusal(err: BaseException) -> str | None:
    """Why the first connect cannot succeed by retrying, or None if retrying may help."""
    if isinstance(err, PlaintextRefused):
        return str(err)
    if isinstance(err, nats.errors.AuthorizationError) or (
        isinstance(err, nats.errors.Error) and any(m in str(err).lower() for m in _AUTH_MARKERS)
    ):
        return f"the server refused the credentials ({err}); check --user/--password, --token, --nkey or --creds"
    if isinstance(err, ssl.SSLError):
        hint = (
            "check --tls-ca"
            if isinstance(err, ssl.SSLCertVerificationError)
            else "check --tls-ca, --tls-cert and --tls-key"
        )
        return f"TLS handshake failed ({type(err).__name__}: {err}); {hint}"
    return None


def _wants_tls(servers: list[str], options: ConnectOptions) -> bool:
    return bool(options.tls_ca or options.tls_cert) or any(s.lower().startswith("tls://") for s in servers)


async def connect(servers: list[str], options: ConnectOptions, **extra: Any) -> Client:
    """Connect with options; a ConnectError with the reason if it cannot.

    Bad credentials and TLS failures end the first connect at once (nats-py would
    otherwise retry them until max_reconnect_attempts, forever for the runtime); later
    reconnects keep retrying. With TLS options (or a tls:// URL), a server that does not
    require TLS is refused before any credential is sent, on every (re)connect, rather
    than silently falling back to plaintext.
    """
    user_error_cb = extra.pop("error_cb", None)
    connecting = True
    last: list[BaseException] = []

    async def on_error(err: Exception) -> None:
        if connecting:
            last[:] = [err]
            reason = _refusal(err)
            if reason is not None:
                raise _Refused(reason)
        if user_error_cb is not None:
            await user_error_cb(err)

    where = ", ".join(servers)
    if options.nkey_seed or options.creds:
        try:
            import nkeys  # noqa: F401  (nats-py signs the server's nonce with it)
        except ImportError as err:
            raise ConnectError("--nkey and --creds need the `nkeys` package: pip install nkeys") from err
    nc = _client(tls_only=_wants_tls(servers, options))
    try:
        await nc.connect(
            servers=servers,
            error_cb=on_error,
            allow_reconnect=True,
            connect_timeout=extra.pop("connect_timeout", 5),
            **{**options.connect_kwargs(), **extra},
        )
    except _Refused as err:
        await _abandon(nc)
        raise ConnectError(f"cannot connect to {where}: {err.reason}") from None
    except asyncio.CancelledError:  # given up on (the runtime was asked to stop while connecting)
        await _abandon(nc)
        raise
    except Exception as err:
        await _abandon(nc)
        cause: BaseException = last[0] if isinstance(err, nats.errors.NoServersError) and last else err
        raise ConnectError(f"cannot connect to {where}: {type(cause).__name__}: {cause}") from err
    connecting = False
    return nc


async def _abandon(nc: Client) -> None:
    """Close a connection that never became usable, without its disconnected/closed callbacks.

    After a failed TLS upgrade nats-py's close would wait forever for the plain stream it
    handed to start_tls (that stream never hears that the socket closed): abort the socket
    here and let close skip the stream; the wait stays bounded all the same."""
    seam.abort_socket(nc)
    try:
        await asyncio.wait_for(nc.close(), 2)
    except Exception as err:  # noqa: BLE001 - half-open or timed out: the socket is closed already
        log.debug("closing an abandoned connection: %s", type(err).__name__)
