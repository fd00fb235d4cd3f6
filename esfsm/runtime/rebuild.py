"""Replay an aggregate's stream into its KV bucket (`esfsm rebuild`)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from nats.js.errors import BadRequestError, KeyWrongLastSequenceError

from esfsm import contract
from esfsm.errors import EsfsmError, ReplayError
from esfsm.runtime.entity import Entity, SnapshotTooLarge
from esfsm.runtime.jetstream import api_failure, api_request
from esfsm.runtime.store import AggregateStore

log = logging.getLogger("esfsm.rebuild")


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


async def _subjects_page(store: AggregateStore, offset: int) -> tuple[dict[str, int], int, int]:
    """The stream's subjects with events from offset on, sorted, at most the server's page
    (100,000; nats-py's stream_info asks for the first page only): (subject → count, total,
    the offset the page starts at)."""
    subject = f"{store.api}.STREAM.INFO.{store.names.stream}"
    body = {"subjects_filter": contract.stream_subjects(store.names.events), "offset": offset}
    timeout = max(store.timeout, 30.0)  # a page of 100,000 subjects takes the server a while
    reply = await api_request(store.nc, subject, body, timeout, subject)
    error = reply.get("error")
    if error:
        raise api_failure(error, subject)
    subjects = (reply.get("state") or {}).get("subjects") or {}
    return subjects, int(reply.get("total") or 0), int(reply.get("offset") or 0)


async def entity_keys(store: AggregateStore) -> list[str]:
    """Every entity key with at least one event in the stream (all pages of the stream info)."""
    keys: set[str] = set()
    offset = 0
    while True:
        subjects, total, start = await _subjects_page(store, offset)
        keys.update(contract.key_of_subject(store.names.events, subject) or "" for subject in subjects)
        offset = start + len(subjects)
        if not subjects or offset >= total:
            break
    return sorted(key for key in keys if key)


async def rebuild(store: AggregateStore, progress: Callable[[str], None] = lambda key: None) -> int:
    """Fold each entity's whole history and write it as its snapshot; returns the count.

    An entity whose events cannot be replayed (ReplayError) keeps its snapshot and the others
    are still rebuilt; at the end RebuildFailed names each of them."""
    await store.ensure()
    keys = await entity_keys(store)
    failures: list[ReplayError] = []
    for key in keys:
        for _ in range(10):
            _, revision = await store.snapshot(key)
            try:
                entity = await store.catch_up(Entity(store.compiled.initial_state(key)))
            except ReplayError as err:  # named once, in RebuildFailed at the end
                failures.append(err)
                break
            try:
                await store.save_snapshot(entity, revision)
                break
            except SnapshotTooLarge as err:  # the others are still rebuilt
                log.error("%s", err)
                break
            except (KeyWrongLastSequenceError, BadRequestError):
                continue
        progress(key)
    if failures:
        raise RebuildFailed(len(keys) - len(failures), failures)
    return len(keys)
