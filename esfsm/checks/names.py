"""NATS names: each valid on its own, and unique and apart across all definitions (one NATS account)."""

from __future__ import annotations

import re
from collections.abc import Iterator

from esfsm import contract
from esfsm import model as m
from esfsm.checks.context import Context, Rule
from esfsm.findings import Finding

SUBJECT_TOKEN = re.compile(r"[^.*>\s]+")
STREAM_NAME = re.compile(r"[^.*>\s/\\]{1,255}")
BUCKET_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")


def nats_names(ctx: Context) -> Iterator[Finding]:
    nats = ctx.aggregate.nats
    default = m.NatsNames.defaults(ctx.aggregate.name, {})
    for field in ("commands", "events"):
        value = getattr(nats, field)
        if not all(SUBJECT_TOKEN.fullmatch(t) for t in value.split(".")):
            yield ctx.error(
                f"/nats/{field}",
                f"{value!r} is not a valid subject prefix: expected tokens separated by '.', none empty, "
                f"without spaces or wildcards ('*', '>'), such as {getattr(default, field)!r}",
                "invalid-nats-name",
            )
    if not STREAM_NAME.fullmatch(nats.stream):
        yield ctx.error(
            "/nats/stream",
            f"{nats.stream!r} is not a valid stream name: expected no spaces, "
            f"'.', '*', '>', '/' or '\\', such as {default.stream!r}",
            "invalid-nats-name",
        )
    if not BUCKET_NAME.fullmatch(nats.bucket):
        yield ctx.error(
            "/nats/bucket",
            f"{nats.bucket!r} is not a valid bucket name: expected letters, digits, "
            f"'_' and '-' only, such as {default.bucket!r}",
            "invalid-nats-name",
        )


RULES: tuple[Rule, ...] = (nats_names,)


# -- across files ------------------------------------------------------------


def across_files(contexts: list[Context]) -> Iterator[Finding]:
    """Rules over all definitions at once: they share one NATS account."""
    yield from duplicate_names(contexts)
    yield from overlapping_subjects(contexts)


_NATS_NAMES = (
    ("commands", "commands subject"),
    ("events", "events subject"),
    ("stream", "stream"),
    ("bucket", "bucket"),
)


def _nats_where(ctx: Context, field: str) -> tuple[str, str]:
    """Pointer of nats.<field>, and a note when the name is not written but defaulted from the aggregate name."""
    ptr = f"/nats/{field}"
    if ptr in ctx.doc.positions:
        return ptr, ""
    return "/aggregate", f" (the default for aggregate {ctx.aggregate.name!r}; set 'nats.{field}' to choose another)"


def duplicate_names(contexts: list[Context]) -> Iterator[Finding]:
    owners: dict[str, Context] = {}
    for ctx in contexts:
        first = owners.setdefault(ctx.aggregate.name, ctx)
        if first is not ctx:
            yield ctx.error(
                "/aggregate",
                f"aggregate {ctx.aggregate.name!r} is already defined in {first.doc.path}; "
                "aggregate names must be unique",
                "duplicate-name",
            )
    seen: dict[tuple[str, str], Context] = {}
    for ctx in contexts:
        for field, what in _NATS_NAMES:
            value = getattr(ctx.aggregate.nats, field)
            first = seen.setdefault((field, value), ctx)
            if first is ctx:
                continue
            ptr, note = _nats_where(ctx, field)
            if note and owners[ctx.aggregate.name] is not ctx:
                continue  # a default that clashes because the aggregate name does: reported above
            yield ctx.error(
                ptr,
                f"{what} {value!r}{note} is already used by aggregate {first.aggregate.name!r} in {first.doc.path}",
                "duplicate-name",
            )


def overlapping_subjects(contexts: list[Context]) -> Iterator[Finding]:
    """An events stream captures contract.stream_subjects(events): no other subject of any aggregate may
    fall inside it."""
    for ctx in contexts:
        for field, what in _NATS_NAMES[:2]:
            subject = getattr(ctx.aggregate.nats, field)
            for other in contexts:
                events = other.aggregate.nats.events
                if field == "events" and (other is ctx or subject == events):
                    continue  # one stream per aggregate; equal prefixes are a duplicate name
                if subject == events or contract.key_of_subject(events, subject) is not None:
                    ptr, note = _nats_where(ctx, field)
                    whose = (
                        "this aggregate's own events"
                        if other is ctx
                        else f"the events of aggregate {other.aggregate.name!r} in {other.doc.path}"
                    )
                    stream = contract.stream_subjects(events)
                    yield ctx.error(
                        ptr,
                        f"{what} {subject!r}{note} lies inside {stream!r}, {whose}; "
                        f"that stream would also capture these {field}",
                        "overlapping-subjects",
                    )
