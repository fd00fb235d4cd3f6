"""How the runtime and the clients reach NATS: options, and the embedded server."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from esfsm.errors import EsfsmError
from esfsm.runtime.server import embedded_url

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

    def connect_kwargs(self) -> dict[str, Any]:
        # pending_size=0: while disconnected a publish fails at once instead of being
        # buffered and sent after the reconnect, when its command may have been answered 503.
        kwargs: dict[str, Any] = {"name": self.name, "max_reconnect_attempts": -1, "reconnect_time_wait": 0.5,
                                  "pending_size": 0}
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


def resolve_servers(explicit: tuple[str, ...] | list[str], store_dir: Path = DEFAULT_STORE) -> list[str] | None:
    """--server, else NATS_URL, else the embedded server `esfsm run` started here; None if none."""
    if explicit:
        return list(explicit)
    env = os.environ.get("NATS_URL")
    if env:
        return [s.strip() for s in env.split(",") if s.strip()]
    url = embedded_url(store_dir)
    return [url] if url else None


async def connect(servers: list[str], options: ConnectOptions, **extra: Any) -> Client:
    async def quiet(*_: object) -> None:
        return None

    try:
        return await nats.connect(servers=servers, error_cb=extra.pop("error_cb", quiet),
                                  allow_reconnect=True, connect_timeout=extra.pop("connect_timeout", 5),
                                  **{**options.connect_kwargs(), **extra})
    except Exception as err:
        raise ConnectError(f"cannot connect to {', '.join(servers)}: {type(err).__name__}: {err}") from err
