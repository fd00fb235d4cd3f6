"""A small async client for applications: send commands, read state and history.

It needs no definition files: each aggregate's names come from its micro
service's discovery answer (``$SRV.INFO.aggregate-<name>``)::

    async with await Client.connect(["nats://127.0.0.1:4222"]) as client:
        reply = await client.send("bankaccount", "deposit", "acc-1", {"amount": 5},
                                  headers={"x-username": "ann"})
        if reply["accepted"]:
            print(reply["version"], reply["state"])
        state = await client.state("bankaccount", "acc-1")
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cloudevents.core.base import BaseCloudEvent
from nats.aio.client import Client as NatsClient
from nats.errors import MaxPayloadError, NoRespondersError, TimeoutError
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError, ServiceUnavailableError

from esfsm import contract, reading
from esfsm.command_path import check_key
from esfsm.compiler import CompiledAggregate
from esfsm.engine import require_text, wire_headers
from esfsm.errors import EsfsmError, ReplayError, UnreadableEvent
from esfsm.findings import did_you_mean, one_of
from esfsm.runtime.connection import (
    DEFAULT_STORE,
    ConnectError,
    ConnectOptions,
    connect,
    gather_answers,
    resolve_servers,
)
from esfsm.runtime.jetstream import api_prefix, last_message, read_subject
from esfsm.values import AGGREGATE_NAME, COMMAND_ID_HEADER, EXPECTED_VERSION_HEADER, KEY_HEADER


def payload_json(value: Any) -> bytes:
    """value as JSON, strictly: NaN, a set, bytes or a datetime is a ValueError or TypeError
    here (orjson would turn NaN into null, and write datetimes the in-memory engine refuses).
    Integers beyond 64 bits go out; the runtime answers them with a 400."""
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode()
    except ValueError as err:
        raise ValueError(f"the payload is not JSON: {err} (NaN and infinities are not JSON)") from err
    except TypeError as err:
        raise TypeError(f"the payload is not JSON: {err}") from err


def _check_key(key: str) -> None:
    """A key that is not one subject token would read other entities' events (`*`, `>`)."""
    problem = check_key(key)
    if problem is not None:
        raise ClientError(problem.message)


class ClientError(EsfsmError):
    """A request the client refuses to send (an invalid key or name), or one no runtime answered."""


@dataclass(frozen=True)
class AggregateInfo:
    name: str
    commands: str
    events: str
    stream: str
    bucket: str
    command_names: tuple[str, ...]


class Client:
    def __init__(self, nc: NatsClient, domain: str | None = None, timeout: float = 5.0) -> None:
        self.nc = nc
        self.domain = domain
        self.timeout = timeout
        self._info: dict[str, AggregateInfo] = {}

    @classmethod
    async def connect(
        cls,
        servers: list[str] | tuple[str, ...] = (),
        options: ConnectOptions | None = None,
        store_dir: Path = DEFAULT_STORE,
        timeout: float = 5.0,
    ) -> Client:
        """Connect to servers, else NATS_URL, else the embedded server of `esfsm run` in store_dir."""
        found = resolve_servers(tuple(servers), store_dir)
        if not found:
            raise ConnectError(
                f"no NATS server given and no embedded server running under {store_dir}/: "
                "start one with `esfsm run`, or pass --server / set NATS_URL"
            )
        options = options or ConnectOptions(name="esfsm-client")
        nc = await connect(found, options, max_reconnect_attempts=2)
        return cls(nc, options.js_domain, timeout)

    async def close(self) -> None:
        await self.nc.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def aggregate(self, name: str) -> AggregateInfo:
        """The aggregate's NATS names, from its service's discovery answer."""
        if not (isinstance(name, str) and AGGREGATE_NAME.fullmatch(name)):
            raise ClientError(
                f"invalid aggregate name {name!r}: aggregate names are lowercase letters, digits "
                "and '_', starting with a letter"
            )
        if name not in self._info:
            try:
                msg = await self.nc.request(contract.info_subject(name), b"", self.timeout)
            except (NoRespondersError, TimeoutError) as err:
                served = await self.served()
                hint = (
                    did_you_mean(name, served) or f"; the runtimes on this server serve {one_of(served)}"
                    if served
                    else "; is `esfsm run` running with its definition?"
                )
                raise ClientError(
                    f"no runtime serves aggregate {name!r} (no answer on {contract.info_subject(name)}){hint}"
                ) from err
            info = orjson.loads(msg.data)
            meta = info.get("metadata") or {}
            self._info[name] = AggregateInfo(
                name,
                meta["commands"],
                meta["events"],
                meta["stream"],
                meta["bucket"],
                tuple(e["name"] for e in info.get("endpoints") or []),
            )
        return self._info[name]

    async def served(self, wait: float = 0.25) -> list[str]:
        """The aggregates that esfsm runtimes serve on this server (the micro services that
        answer `$SRV.PING` within wait seconds), sorted."""
        found: set[str] = set()
        for answer in await gather_answers(self.nc, [contract.PING_SUBJECT], wait):
            try:
                name = orjson.loads(answer).get("name", "")
            except (orjson.JSONDecodeError, AttributeError):
                continue
            served = contract.aggregate_of_service(name) if isinstance(name, str) else None
            if served is not None:
                found.add(served)
        return sorted(found)

    async def send(
        self,
        aggregate: str,
        command: str,
        key: str,
        data: Any = None,
        headers: dict[str, str] | None = None,
        command_id: str | None = None,
        expected_version: int | None = None,
    ) -> dict[str, Any]:
        """Send a command; the reply dict (`accepted`, `message`, and the rest of the wire contract)."""
        require_text("command", command)
        require_text("key", key)
        if command_id is not None:
            require_text("command_id", command_id)
        all_headers = wire_headers(headers)  # what cannot be sent is refused before anything is
        body = data if isinstance(data, bytes) else payload_json({} if data is None else data)
        info = await self.aggregate(aggregate)
        all_headers[KEY_HEADER] = key
        if command_id is not None:
            all_headers[COMMAND_ID_HEADER] = command_id
        if expected_version is not None:
            all_headers[EXPECTED_VERSION_HEADER] = str(expected_version)
        try:
            msg = await self.nc.request(f"{info.commands}.{command}", body, self.timeout, headers=all_headers)
        except MaxPayloadError as err:
            raise ClientError(
                f"the command is {len(body)} bytes, more than the server takes in one message "
                f"({self.nc.max_payload} bytes, its max_payload)"
            ) from err
        except NoRespondersError as err:
            names = ", ".join(info.command_names)
            raise ClientError(f"aggregate {aggregate!r} has no command {command!r} (commands: {names})") from err
        except TimeoutError as err:
            raise ClientError(f"no reply to {aggregate}.{command} within {self.timeout}s") from err
        return orjson.loads(msg.data)  # type: ignore[no-any-return]

    async def state(self, aggregate: str, key: str, wait: float = 2.0) -> dict[str, Any] | None:
        """The entity's state from the KV bucket, waiting (up to `wait` s) for the snapshot to
        reflect the last stored event (then it is returned with "stale": True); None when the
        entity has no event. The replies the snapshot remembers for command ids are left out."""
        _check_key(key)
        info = await self.aggregate(aggregate)
        js = self.nc.jetstream(domain=self.domain)
        try:
            kv = await js.key_value(info.bucket)
        except (BucketNotFoundError, NotFoundError) as err:
            raise ClientError(f"bucket {info.bucket!r} not found") from err
        except (ServiceUnavailableError, NoRespondersError) as err:
            where = f"in domain {self.domain!r}" if self.domain else "on this server"
            raise ClientError(
                f"JetStream does not answer {where}: is the JetStream domain (--js-domain) right?"
            ) from err
        deadline = time.monotonic() + wait
        while True:
            last = await last_message(
                self.nc, info.stream, contract.entity_subjects(info.events, key), self.timeout, api_prefix(self.domain)
            )
            try:
                entry = await kv.get(key)
                value = orjson.loads(entry.value) if entry.value else None
            except KeyNotFoundError:
                value = None
            behind = last is not None and (value is None or value.get("seq", 0) < last.seq)
            if not behind or time.monotonic() > deadline:
                if value is not None:
                    value.pop("commands", None)
                    if behind:
                        value["stale"] = True
                return value
            await asyncio.sleep(0.05)

    async def history(self, aggregate: str, key: str) -> list[dict[str, Any]]:
        """The entity's events (CloudEvents as dicts), oldest first, each with its stream `seq`."""
        _check_key(key)
        info = await self.aggregate(aggregate)
        events = []
        async for stored in read_subject(
            self.nc, info.stream, contract.entity_subjects(info.events, key), 0, self.timeout, api_prefix(self.domain)
        ):
            event = reading.document(stored.body)  # as the definition reads it
            event["seq"] = stored.seq
            events.append(event)
        return events


def read_forms(compiled: CompiledAggregate, key: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each of an entity's stored events (Client.history's documents, oldest first) as compiled's
    definition reads it: {"type", "eventversion", "data"} after upcasting, through the one read
    path (reading.py), so what history shows is what the runtime folds. An event the definition
    cannot read gets {"error": why} instead; one it reads but cannot apply where the entity then
    is gets its read form and the error, and the entity stays where it was."""
    state = compiled.initial_state(key)
    forms: list[dict[str, Any]] = []
    for document in events:
        stored = {k: v for k, v in document.items() if k != "seq"}  # seq is the stream's, not the event's
        try:
            event, state = reading.apply(compiled, state, stored)
        except UnreadableEvent as err:
            forms.append({"error": str(err)})
            continue
        except ReplayError as err:
            try:
                event = reading.read(compiled, state, stored)  # an upcaster that failed raises again here
            except ReplayError:
                forms.append({"error": str(err)})
                continue
            forms.append({**_read_form(event), "error": str(err)})
            continue
        forms.append(_read_form(event))
    return forms


def _read_form(event: BaseCloudEvent) -> dict[str, Any]:
    return {"type": event.get_type(), "eventversion": reading.stored_version(event), "data": event.get_data()}
