"""Replay an aggregate's stream into its KV bucket (`esfsm rebuild`)."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable

from nats.js.errors import BadRequestError, KeyWrongLastSequenceError

from esfsm import contract
from esfsm.errors import EsfsmError, ReplayError
from esfsm.runtime.catalog import subject_pages
from esfsm.runtime.entity import Entity, SnapshotTooLarge
from esfsm.runtime.store import AggregateStore

log = logging.getLogger("esfsm.rebuild")
CONCURRENCY = 64  # entities rebuilt at once


class RebuildFailed(EsfsmError):
    """Some entities' events could not be replayed; every other entity was rebuilt."""

    def __init__(self, rebuilt: int, failures: list[ReplayError]) -> None:
        self.rebuilt = rebuilt
        self.failures = failures
        count = len(failures)
        lines = "\n".join(str(failure) for failure in failures)
        super().__init__(
            f"{count} entit{'y' if count == 1 else 'ies'} could not be replayed "
            f"(the other {rebuilt} rebuilt; these keep their snapshots):\n{lines}"
        )


async def entity_keys(store: AggregateStore) -> list[str]:
    """Every entity key with at least one event in the stream (all pages of the stream info)."""
    keys: set[str] = set()
    events = store.names.events
    async for page in subject_pages(store.nc, store.api, store.names.stream, contract.stream_subjects(events)):
        keys.update(contract.key_of_subject(events, subject) or "" for subject in page)
    return sorted(key for key in keys if key)


async def rebuild(
    store: AggregateStore, progress: Callable[[str], None] = lambda key: None, keys: list[str] | None = None
) -> int:
    """Fold each entity's whole history and write it as its snapshot, under this definition's
    state fingerprint; returns the count.

    First this definition is registered again in the catalog, as the newest: running runtimes
    of another definition then leave the snapshots it writes alone (the way back from a
    rolling upgrade). An entity whose events cannot be replayed (ReplayError) keeps its
    snapshot and the others are still rebuilt; at the end RebuildFailed names each of them."""
    await store.ensure()
    await store.catalog.bootstrap()
    await store.catalog.register(again=True)
    keys = await entity_keys(store) if keys is None else keys  # keys: only these (tests of many keys)
    failures: list[ReplayError] = []
    for start in range(0, len(keys), CONCURRENCY):  # in windows: one entity at a time waits on each round trip
        window = keys[start : start + CONCURRENCY]
        for key, failure in zip(
            window, await asyncio.gather(*(_rebuild_one(store, key) for key in window)), strict=True
        ):
            if failure is not None:
                failures.append(failure)
            progress(key)
    if failures:
        raise RebuildFailed(len(keys) - len(failures), failures)
    return len(keys)


async def _rebuild_one(store: AggregateStore, key: str) -> ReplayError | None:
    """Replay key from its first event (keeping the answers its snapshot remembers) and write it;
    the ReplayError when its events cannot be replayed."""
    for _ in range(10):
        snapshot, revision = await store.snapshot(key)
        commands = snapshot.commands if snapshot is not None else OrderedDict()
        try:
            entity = await store.catch_up(Entity(store.compiled.initial_state(key), commands=commands))
        except ReplayError as err:  # named once, in RebuildFailed at the end
            return err
        try:
            await store.save_snapshot(entity, revision)
            return None
        except SnapshotTooLarge as err:  # the others are still rebuilt
            log.error("%s", err)
            return None
        except (KeyWrongLastSequenceError, BadRequestError):
            continue
    return None
