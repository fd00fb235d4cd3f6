"""Replay an aggregate's stream into its KV bucket (`esfsm rebuild`)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from nats.js.errors import BadRequestError, KeyWrongLastSequenceError

from esfsm import contract
from esfsm.runtime.entity import Entity, SnapshotTooLarge
from esfsm.runtime.store import AggregateStore

log = logging.getLogger("esfsm.rebuild")


async def entity_keys(store: AggregateStore) -> list[str]:
    """Every entity key with at least one event in the stream."""
    info = await store.js.stream_info(store.names.stream, subjects_filter=contract.stream_subjects(store.names.events))
    keys = {contract.key_of_subject(store.names.events, subject) for subject in (info.state.subjects or {})}
    return sorted(key for key in keys if key)


async def rebuild(store: AggregateStore, progress: Callable[[str], None] = lambda key: None) -> int:
    """Fold each entity's whole history and write it as its snapshot; returns the count."""
    await store.ensure()
    keys = await entity_keys(store)
    for key in keys:
        for _ in range(10):
            _, revision = await store.snapshot(key)
            entity = await store.catch_up(Entity(store.compiled.initial_state(key)))
            try:
                await store.save_snapshot(entity, revision)
                break
            except SnapshotTooLarge as err:  # the others are still rebuilt
                log.error("%s", err)
                break
            except (KeyWrongLastSequenceError, BadRequestError):
                continue
        progress(key)
    return len(keys)
