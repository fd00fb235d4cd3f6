"""What an aggregate's stream holds, and whether a definition can read it all.

The runtime keeps a catalog of the event types and versions it has stored
(runtime/catalog.py); `esfsm run` checks it before serving, and
`esfsm validate --against nats://…` reads it. Both ask the same question here,
without NATS: which stored (type, version) pairs does this definition not read?
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from esfsm.compiler import CompiledAggregate


@dataclass(frozen=True)
class StreamContents:
    """Per event type name as stored (old names included): the versions stored, and how many
    events of that type the stream holds (None: not counted). `states`: the states entities
    have been left in, when known."""

    versions: Mapping[str, frozenset[int]]
    counts: Mapping[str, int | None] = field(default_factory=dict)
    states: frozenset[str] | None = None


@dataclass(frozen=True)
class Unread:
    """Stored events of one type this definition cannot read: `newer` when the type is known but
    some stored versions are newer than the definition's (written by a newer definition)."""

    event_type: str
    versions: tuple[int, ...]
    count: int | None
    newer: bool

    def __str__(self) -> str:
        versions = ", ".join(str(v) for v in self.versions)
        count = "" if self.count is None else f", {self.count} event{'' if self.count == 1 else 's'} stored"
        what = (
            "newer than this definition knows"
            if self.newer
            else "no event of this definition has that name or lists it under `formerly`"
        )
        plural = "s" if len(self.versions) > 1 else ""
        return f"{self.event_type!r} (version{plural} {versions}{count}): {what}"


def unread(compiled: CompiledAggregate, contents: StreamContents) -> list[Unread]:
    """The stored event types (and versions) compiled cannot replay, sorted by type."""
    problems = []
    for event_type in sorted(contents.versions):
        versions = sorted(contents.versions[event_type])
        count = contents.counts.get(event_type)
        reader = compiled.readers.get(event_type)
        if reader is None:
            problems.append(Unread(event_type, tuple(versions), count, newer=False))
            continue
        newer = tuple(v for v in versions if v > reader.version)
        if newer:
            problems.append(Unread(event_type, newer, count, newer=True))
    return problems
