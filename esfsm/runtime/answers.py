"""Durable command ids: the answer to every command id, kept for a window of time.

An answered command id — accepted or refused — gets the same answer again,
from any runtime process and after restarts, for `window` seconds (default
seven days): the answers live in the KV bucket `<bucket>_ids` (contract.py),
one key per entity and command id, whose `max_age` is the window, so
JetStream itself forgets them. docs/reliability.md says why this store.

In front of it, per process: the answers of the entity's recent accepted
commands ride in its snapshot (`Entity.commands`, also rebuilt from the
`commandid` of stored events), and a bounded cache holds recent answers, so a
quick retry costs no read.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import nats.errors
import orjson
from cachetools import LRUCache
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import BadRequestError, KeyNotFoundError, NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue

from esfsm import contract
from esfsm.runtime.jetstream import NOT_SENT, StoreError, UnavailableError

log = logging.getLogger("esfsm.answers")
DEFAULT_WINDOW = 7 * 24 * 3600.0  # seconds an answer is kept
CACHED = 10_000  # answers kept in memory per aggregate and process


def answer_key(key: str, command_id: str) -> str:
    """The bucket key of an entity's command id: a command id may hold any printable ASCII,
    which a KV key cannot, so it is hashed (the value keeps the id itself)."""
    return f"{key}.{hashlib.sha256(command_id.encode()).hexdigest()}"


class Answers:
    """The answers given to command ids of one aggregate."""

    def __init__(
        self,
        js: JetStreamContext,
        bucket: str,
        replicas: int = 1,
        window: float = DEFAULT_WINDOW,
        description: str = "",
    ) -> None:
        if not window > 0:
            raise ValueError(f"the command id window must be a positive number of seconds, got {window!r}")
        self.js = js
        self.bucket = contract.answers_bucket(bucket)
        self.replicas = replicas
        self.window = window
        self.description = description
        self.kv: KeyValue | None = None
        self._cache: LRUCache[tuple[str, str], dict[str, Any]] = LRUCache(maxsize=CACHED)

    async def ensure(self) -> None:
        """Find or create the bucket; a window or replica count changed since is applied."""
        try:
            self.kv = await self.js.key_value(self.bucket)
        except (NotFoundError, BadRequestError):
            self.kv = await self.js.create_key_value(
                KeyValueConfig(
                    bucket=self.bucket,
                    history=1,
                    ttl=self.window,
                    replicas=self.replicas,
                    direct=True,
                    description=self.description or "esfsm answers to command ids",
                )
            )
            return
        info = await self.js.stream_info(contract.kv_stream(self.bucket))
        if info.config.max_age != self.window or info.config.num_replicas != self.replicas:
            info.config.max_age, info.config.num_replicas = self.window, self.replicas
            await self.js.update_stream(info.config)
            log.info("the answers to command ids of %s are now kept %g s", self.bucket, self.window)

    def cached(self, key: str, command_id: str) -> dict[str, Any] | None:
        """The answer this process remembers, without a read."""
        return self._cache.get((key, command_id))

    async def lookup(self, key: str, command_id: str) -> dict[str, Any] | None:
        """The answer given to command_id for key by any process within the window, or None."""
        answer = self._cache.get((key, command_id))
        if answer is not None:
            return answer
        assert self.kv is not None, "ensure() first"
        try:
            entry = await self.kv.get(answer_key(key, command_id))
        except KeyNotFoundError:
            return None
        except (ServiceUnavailableError, nats.errors.TimeoutError, *NOT_SENT) as err:
            raise UnavailableError(f"cannot read the answers to command ids ({type(err).__name__})") from err
        if not entry.value:
            return None
        stored = orjson.loads(entry.value)
        if stored.get("id") != command_id:  # a hash collision: never another command's answer
            return None
        answer = stored["reply"]
        self._cache[(key, command_id)] = answer
        return answer  # type: ignore[no-any-return]

    async def remember(self, key: str, command_id: str, reply: dict[str, Any]) -> None:
        """Keep reply as the answer to command_id for key. StoreError when JetStream did not
        take it (the caller decides what that means for its reply)."""
        self._cache[(key, command_id)] = reply
        assert self.kv is not None, "ensure() first"
        value = orjson.dumps({"id": command_id, "reply": reply})
        try:
            await self.kv.put(answer_key(key, command_id), value)
        except (ServiceUnavailableError, nats.errors.TimeoutError, *NOT_SENT) as err:
            raise UnavailableError(
                f"cannot record the answer to {contract.COMMAND_ID_HEADER} ({type(err).__name__})"
            ) from err
        except (nats.errors.Error, nats.js.errors.Error) as err:
            raise StoreError(f"cannot record the answer to {contract.COMMAND_ID_HEADER}: {err}") from err

    def forget(self, key: str) -> None:
        """Drop what this process remembers of key's answers (tests that purge an entity)."""
        for cached in [k for k in self._cache if k[0] == key]:
            del self._cache[cached]

    async def purge(self, key: str) -> None:
        """Remove every stored answer of key (the scenario engine's fresh start)."""
        self.forget(key)
        await self.js.purge_stream(
            contract.kv_stream(self.bucket), subject=contract.kv_subject(self.bucket, f"{key}.>")
        )
