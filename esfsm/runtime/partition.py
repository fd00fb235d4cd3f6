"""Entity keys shared out among the worker processes of one `esfsm run --workers N`.

Python runs one thread of code at a time, so a runtime process uses one core.
With N workers, each serves every aggregate, and each entity key belongs to
one of them (a stable hash of the key). NATS hands a command to whichever
member of the queue group it picks; a worker that gets a command for a key
it does not own passes it on, unchanged and with the client's reply subject,
to the owner's own subject `_ESFSM.<group>.<owner>.cmd.<command subject>`. The
owner answers the client directly, so a passed-on command costs one more
message, and every entity stays warm in exactly one process: no worker
decides on a state another one changed, and the commands of one entity keep
their arrival order as they do in a single process. The snapshot writers
share the durable consumer as before; one that is handed an event of a key
another worker owns passes it (key, stream sequence, ack subject; a batch's
worth in a few messages) to that worker's writer, which has the entity warm.

Before joining the queue group a worker waits until every other worker
answers on `_ESFSM.<group>.<index>.ping`, so nothing is ever passed to a
worker that is not listening yet. Separate `esfsm run` invocations (other
machines, say) do not share keys this way: between them the queue group is
blind and the per-entity concurrency check keeps them right (see
docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import re
import zlib
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client

from esfsm.errors import EsfsmError

PREFIX = "_ESFSM"
_SPEC = re.compile(r"([A-Za-z0-9_-]{1,64}):(\d{1,4})/(\d{1,4})")


class PeersMissing(EsfsmError):
    """Some workers of the group never answered."""


@dataclass(frozen=True)
class Partition:
    """Worker `index` of `count` (at least 2) in `group` (a token unique to one `esfsm run`)."""

    group: str
    index: int
    count: int

    @classmethod
    def parse(cls, spec: str) -> Partition:
        """GROUP:INDEX/COUNT, as `esfsm run` hands it to its workers."""
        match = _SPEC.fullmatch(spec)
        if not match:
            raise ValueError(f"{spec!r} is not GROUP:INDEX/COUNT")
        group, index, count = match.group(1), int(match.group(2)), int(match.group(3))
        if count < 2 or index >= count:
            raise ValueError(f"{spec!r}: there are at least 2 workers, and the index is below their count")
        return cls(group, index, count)

    def __str__(self) -> str:
        return f"{self.group}:{self.index}/{self.count}"

    def owner(self, key: str) -> int:
        """The worker that owns key (the same answer in every process and on every run)."""
        return zlib.crc32(key.encode()) % self.count

    def subject(self, worker: int, subject: str) -> str:
        """Where a command sent to subject goes when it is passed to worker."""
        return f"{PREFIX}.{self.group}.{worker}.cmd.{subject}"

    def snapshots(self, worker: int, aggregate: str) -> str:
        """Where the snapshot writer of aggregate hands worker the events of its keys."""
        return f"{PREFIX}.{self.group}.{worker}.snapshots.{aggregate}"

    @property
    def ping(self) -> str:
        return f"{PREFIX}.{self.group}.{self.index}.ping"

    async def listen(self, nc: Client) -> object:
        """Answer the other workers' pings (the subscription; unsubscribe it to stop)."""

        async def pong(msg: object) -> None:
            await msg.respond(b"")  # type: ignore[attr-defined]

        return await nc.subscribe(self.ping, cb=pong)

    async def wait_for_peers(self, nc: Client, timeout: float = 60.0, stop: asyncio.Event | None = None) -> bool:
        """True once every other worker answers its ping; False if stop was set meanwhile;
        PeersMissing after timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        waiting = [worker for worker in range(self.count) if worker != self.index]
        while waiting:
            if stop is not None and stop.is_set():
                return False
            try:
                await nc.request(f"{PREFIX}.{self.group}.{waiting[0]}.ping", b"", timeout=1.0)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                if loop.time() > deadline:
                    raise PeersMissing(
                        f"workers {', '.join(map(str, waiting))} of {self.count} did not start within {timeout:.0f} s"
                    ) from None
                await asyncio.sleep(0.05)
                continue
            waiting.pop(0)
        return True
