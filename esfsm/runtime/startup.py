"""`esfsm run`'s start-up check: never serve a definition that cannot replay its stream.

Before anything is written (the stream updated, a bucket or consumer created),
each aggregate's stream contents (runtime/catalog.py) are put to the definition
(esfsm/stored.py). Event types it knows under no name, or versions newer than it
knows, refuse the start: one error naming them, exit 1, nothing written — unless
a definition registered after this one reads them all. Then this runtime is the
older side of a rolling upgrade: it serves, answers 503 for the entities holding
such events (pipeline.py) and leaves their snapshots alone (store.py).

After the stream and buckets are in place, `registered` bootstraps the catalog,
registers this definition and says in one line how snapshots computed by
another definition will be refreshed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.aio.client import Client
from nats.js.errors import NotFoundError

from esfsm.compiler import CompiledAggregate
from esfsm.errors import EsfsmError
from esfsm.runtime.catalog import Catalog, reads
from esfsm.runtime.store import NO_JETSTREAM, no_jetstream
from esfsm.stored import StreamContents, Unread, unread

log = logging.getLogger("esfsm.run")


class DefinitionRefused(EsfsmError):
    """The stream holds events the definition cannot replay, and no newer definition reads them."""

    def __init__(self, compiled: CompiledAggregate, problems: list[Unread]) -> None:
        self.problems = problems
        names = compiled.model.nats
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(
            f"aggregate {compiled.name!r} ({compiled.model.file}): stream {names.stream!r} holds events "
            f"this definition cannot replay:\n{lines}\n"
            "not serving it, and nothing was written. Keep these events in the definition (an event "
            "named so, or listing the name under `formerly`, at that version or a later one with "
            f"`upcast` steps); `esfsm validate {compiled.model.file} --against nats://…` says where."
        )


@dataclass(frozen=True)
class Checked:
    """What the check found: whether the stream existed, and the events only a newer definition reads."""

    existed: bool
    newer_only: tuple[Unread, ...] = ()


async def check(nc: Client, compiled: CompiledAggregate, domain: str | None = None) -> Checked:
    """Refuse (DefinitionRefused) a definition that cannot replay what its stream holds;
    writes nothing."""
    catalog = Catalog(nc, compiled, domain=domain)
    try:
        await catalog.js.stream_info(compiled.model.nats.stream)
    except NotFoundError:
        return Checked(existed=False)
    except NO_JETSTREAM as err:
        raise no_jetstream(catalog.api, err) from None
    versions, states = await catalog.contents()
    contents = StreamContents({t: frozenset(v) for t, v in versions.items()}, states=states)
    if not unread(compiled, contents):
        return Checked(existed=True)
    # only what cannot be read is counted (an ephemeral consumer each; without the permission, no count)
    counts = {problem.event_type: await catalog.count(problem.event_type) for problem in unread(compiled, contents)}
    problems = unread(compiled, StreamContents(contents.versions, counts, states))
    registered = await catalog.definitions()
    ours = registered.get(compiled.state_fingerprint, (0, {}))[0]  # 0: never registered, so it will be the newest
    newer = [record for revision, record in registered.values() if 0 < ours < revision]
    uncovered = [p for p in problems if not any(all(reads(r, p.event_type, v) for v in p.versions) for r in newer)]
    if uncovered:
        raise DefinitionRefused(compiled, uncovered)
    log.warning(
        "aggregate %s: a newer definition is registered that reads what this one cannot (%s); "
        "serving as the older side of a rolling upgrade: the entities holding those events are answered 503 here",
        compiled.name,
        "; ".join(str(problem) for problem in problems),
    )
    return Checked(existed=True, newer_only=tuple(problems))


async def registered(catalog: Catalog, checked: Checked) -> None:
    """Bootstrap the catalog, register this definition, and say how snapshots computed by
    another definition are refreshed (one line, when there can be any)."""
    await catalog.bootstrap()
    created = await catalog.register()
    others = {fp: revision for fp, (revision, _) in (await catalog.definitions()).items()}
    others.pop(catalog.compiled.state_fingerprint, None)
    name = catalog.compiled.name
    newer = sorted(fp for fp, revision in others.items() if revision > catalog.revision)
    if newer:
        log.warning(
            "aggregate %s: a definition was registered after this one (state fingerprint %s; ours %s): snapshots "
            "written under it are never overwritten here, and such entities are replayed from their events when "
            "loaded. Expected during a rolling upgrade; after a rollback, `esfsm rebuild %s` makes this definition "
            "the newest and refreshes every snapshot",
            name,
            ", ".join(newer),
            catalog.compiled.state_fingerprint,
            name,
        )
    elif others or (created and checked.existed):
        log.info(
            "snapshots written under another definition are replayed from their events when an entity is next "
            "loaded and rewritten by the snapshot writer; `esfsm rebuild %s` refreshes them all now",
            name,
            extra={"fields": {"aggregate": name, "state_fingerprint": catalog.compiled.state_fingerprint}},
        )
