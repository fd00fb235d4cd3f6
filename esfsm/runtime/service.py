"""Serve one compiled aggregate as a NATS micro service: life cycle and routing.

Requests arrive straight from the connection's read loop (wire.py); each is
handed to the pipeline (pipeline.py): its fast path when the entity is warm,
otherwise a task of its own. Commands for different entities run
concurrently (nats.micro would hand over one request at a time per
endpoint); commands for one entity are applied in arrival order, by the
entity's turn (turns.py). With `--workers`, a command for a key another
worker owns is passed on to it (partition.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import orjson
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service, ServiceConfig

from esfsm import __version__, contract, seam
from esfsm.command_path import clip
from esfsm.compiler import CompiledAggregate
from esfsm.contract import ERROR_CODE_HEADER, ERROR_HEADER, KEY_HEADER, TEST_NOW_HEADER
from esfsm.model import fingerprint
from esfsm.runtime.entity import Entity
from esfsm.runtime.jetstream import requester
from esfsm.runtime.partition import Partition
from esfsm.runtime.pipeline import Pipeline, Reply, internal_error, rejection
from esfsm.runtime.store import AggregateStore
from esfsm.runtime.turns import DEFAULT_CAPACITY, Slots
from esfsm.runtime.wire import duplicate_header, header_block, sendable_subject, wire
from esfsm.values import BAD_REQUEST

__all__ = ["TEST_NOW_HEADER", "AggregateService"]  # TEST_NOW_HEADER: re-exported, tests import it from here

log = logging.getLogger("esfsm.service")
STOP_WAIT = 30.0  # seconds stop() waits for the commands in flight (each is bounded by its own timeouts)
PASSED_GRACE = 1.0  # seconds a draining worker still takes commands passed on by the others


def _error_headers(reply: Reply) -> dict[str, str] | None:
    """The micro error headers (ADR-32) of a rejection; None for an accepted reply."""
    if reply["accepted"]:
        return None
    return {ERROR_HEADER: reply["message"], ERROR_CODE_HEADER: str(reply["code"])}


def _printable(text: str) -> str:
    """A header line cannot carry control characters (the server would drop the connection)."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


class AggregateService:
    """The micro service `aggregate-<name>`: an endpoint per command, queue group `<name>`."""

    def __init__(
        self,
        nc: Client,
        compiled: CompiledAggregate,
        store: AggregateStore,
        test_clock: bool = False,
        partition: Partition | None = None,
        cache_entities: int = DEFAULT_CAPACITY,
    ) -> None:
        self.nc = nc
        self.partition = partition
        self._passed: Subscription | None = None  # commands other workers pass to this one (partition.py)
        self.passed_on = 0  # commands this process passed to the worker owning their key
        self.compiled = compiled
        self.store = store
        self.wire = wire(nc)
        self.service: Service | None = None
        self._slots = Slots(cache_entities)
        self._tasks: set[asyncio.Task[None]] = set()
        self._unknown: Subscription | None = None
        self.handled = 0
        # test_clock: only `esfsm test --nats` sets it; the clock then comes from the header
        # x-esfsm-test-now, so scenarios with a fixed `now` run on NATS too.
        self.pipeline = Pipeline(nc, compiled, store, self._slots, self._respond, self._spawn, test_clock)

    @property
    def fast_served(self) -> int:
        """Commands decided and stored without a task (pipeline.py's fast path)."""
        return self.pipeline.fast_served

    # -- life cycle ----------------------------------------------------------

    async def listen_passed(self) -> None:
        """With a partition: take the commands the other workers pass on (before any of them
        can pass one, see partition.py)."""
        if self.partition is not None and self._passed is None:
            prefix = self.partition.subject(self.partition.index, f"{self.compiled.model.nats.commands}.")
            self._passed = await self.wire.subscribe(f"{prefix}>", self._receiver(prefix, None, passed=True))

    async def start(self) -> None:
        await self.listen_passed()
        model = self.compiled.model
        self.service = await add_service(
            self.nc,
            ServiceConfig(
                name=model.service_name,
                version=__version__,
                description=model.description or f"esfsm aggregate {model.name}",
                queue_group=model.name,
                metadata={
                    "aggregate": model.name,
                    "commands": model.nats.commands,
                    "events": model.nats.events,
                    "stream": model.nats.stream,
                    "bucket": model.nats.bucket,
                    "definition": fingerprint(model),
                },
            ),
        )
        await requester(self.nc).ready()  # the fast path sends appends without awaiting
        for name, command in self.compiled.commands.items():
            await self.service.add_endpoint(
                EndpointConfig(
                    name=name,
                    subject=contract.command_subject(model.nats.commands, name),
                    queue_group=model.name,
                    handler=self._unrouted,
                    metadata={
                        "schema": orjson.dumps(command.model.schema).decode(),
                        "description": command.model.description,
                        "accepted_in": ",".join(sorted(command.accepted_states)),
                    },
                )
            )

        # Unknown commands get a 404 reply rather than "no responders". This
        # subscription covers every command subject in the SAME queue group as
        # the endpoints: NATS hands each request to exactly one member of the
        # group, so it may get known commands too, and serves them like the
        # endpoints do. (A group of its own would see every command twice.)
        # Every request comes straight from the read loop (wire.py); the
        # endpoints' statistics are kept here.
        prefix = f"{model.nats.commands}."
        for endpoint in seam.micro_endpoints(self.service):
            self.wire.route(endpoint.subscription, self._receiver(prefix, endpoint))
        self._unknown = await self.wire.subscribe(f"{prefix}>", self._receiver(prefix, None), queue=model.name)

    def _receiver(self, prefix: str, endpoint: Any, passed: bool = False) -> Any:
        partition = None if passed else self.partition

        def receive(subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
            if not reply:
                return
            if endpoint is not None:
                endpoint.count_request()
            if not sendable_subject(reply):  # a space or control character: would break the protocol line
                log.warning("dropped a request whose reply subject cannot be sent to")
                return
            command, headers = subject[len(prefix) :], headers or {}
            twice = duplicate_header(headers)
            if twice is not None:  # which one would it be for? neither
                self._respond(
                    command,
                    rejection(
                        BAD_REQUEST, f"the request carries more than one {twice} header: a command is for one entity"
                    ),
                    reply,
                    None,
                )
                return
            if partition is not None and self._pass_on(partition, subject, reply, data, headers):
                return
            key = headers.get(KEY_HEADER)
            if not self.pipeline.fast(command, data, headers, key, reply):
                self._spawn(self._serve(command, data, headers, key, reply))

        return receive

    def _pass_on(self, partition: Partition, subject: str, reply: str, data: bytes, headers: dict[str, str]) -> bool:
        """Send a command for a key another worker owns to that worker (it answers the client)."""
        key = headers.get(KEY_HEADER)
        if key is None:
            return False  # a 400 whatever worker answers it
        owner = partition.owner(key)
        if owner == partition.index:
            return False
        try:
            self.wire.publish(partition.subject(owner, subject), data, reply, header_block(headers))
        except Exception:  # disconnected, say: served here, the concurrency check keeps it right
            log.debug("could not pass a command on to worker %d", owner, exc_info=True)
            return False
        self.passed_on += 1
        return True

    async def stop(self) -> None:
        """Stop taking requests, then let the ones in flight finish. Commands other workers
        pass on are taken until the end, and PASSED_GRACE longer: the other workers get the
        same signal, but may leave the queue group a moment later."""
        if self._unknown is not None:
            await self.wire.unsubscribe(self._unknown)
            self._unknown = None
        if self.service is not None:
            routed = [e.subscription for e in seam.micro_endpoints(self.service) if e.subscription is not None]
            await self.service.stop()
            for sub in routed:
                self.wire.unroute(sub)
            self.service = None
        await self._finish_in_flight()
        if self._passed is not None:
            await asyncio.sleep(PASSED_GRACE)
            await self.wire.unsubscribe(self._passed)
            self._passed = None
            await self._finish_in_flight()

    async def _finish_in_flight(self) -> None:
        deadline = asyncio.get_running_loop().time() + STOP_WAIT
        while self._tasks or self.pipeline.inflight:  # each one ends: an ack, or the request's timeout
            if asyncio.get_running_loop().time() > deadline:
                log.warning("stopped with %d commands still in flight", len(self._tasks) + self.pipeline.inflight)
                break
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=1)
            else:
                await asyncio.sleep(0.01)

    async def _unrouted(self, request: Request) -> None:  # pragma: no cover - requests arrive through wire.py
        log.warning("request on %s took the slow path", request.subject)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Each request in a task of its own: nats-py awaits a callback before the next. The
        tasks are short (each bounded by its own timeouts); stop() awaits them all, and an
        exception that escaped one is logged, never left unretrieved."""
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a command's task failed", exc_info=task.exception())

    def forget(self, key: str) -> None:
        """Drop what this process remembers of key (tests that purge an entity)."""
        self._slots.forget(key)
        self.store.answers.forget(key)

    def cached(self, key: str) -> Entity | None:
        slot = self._slots.peek(key)
        return slot.entity if slot else None

    @property
    def warm(self) -> set[str]:
        """The keys whose slots this process holds."""
        return set(self._slots)

    # -- one request ---------------------------------------------------------

    async def process(self, command: str, body: bytes, headers: dict[str, str]) -> Reply:
        """Decide and store one command on the task path; the reply as a dict."""
        return await self.pipeline.process(command, body, headers, headers.get(KEY_HEADER))

    async def _serve(self, command: str, body: bytes, headers: dict[str, str], key: str | None, reply_to: str) -> None:
        try:
            reply = await self.pipeline.process(command, body, headers, key)
        except Exception as err:  # the reply must still go out; the log keeps the cause
            log.exception("command %s failed unexpectedly", command)
            reply = internal_error(err)
        self._respond(command, reply, reply_to, key)

    def _respond(self, command: str, reply: Reply, reply_to: str, key: str | None) -> None:
        self.handled += 1
        if log.isEnabledFor(logging.DEBUG):  # `esfsm run --log-level debug`: one line per command
            self._log_outcome(command, reply, key)
        if not reply["accepted"]:  # rejections quote input, which can be huge; the header repeats it
            reply["message"] = _printable(clip(reply["message"], 500))
            reply["errors"] = [
                {"path": clip(e["path"]), "message": clip(e["message"], 500)} for e in reply.get("errors", [])[:50]
            ]
        try:
            error_headers = _error_headers(reply)
            self.wire.publish(
                reply_to, orjson.dumps(reply), headers=header_block(error_headers) if error_headers else b""
            )
        except Exception:  # connection lost: the client sees a timeout, nothing else to do
            log.warning("could not send the reply to %s", command, exc_info=True)

    def _log_outcome(self, command: str, reply: Reply, key: str | None) -> None:
        fields: dict[str, Any] = {
            "aggregate": self.compiled.name,
            "command": command,
            "key": _printable(clip(key or "-", 130)),
            "accepted": reply["accepted"],
        }
        if reply["accepted"]:
            fields["version"] = reply["version"]
            fields["state"] = reply["state"]
            fields["events"] = ",".join(event["type"] for event in reply["events"]) or "-"
        else:
            fields["code"] = reply.get("code")
            fields["reason"] = _printable(clip(str(reply["message"]), 200))
        log.debug("command", extra={"fields": fields})
