"""States, events and transitions: every name refers to a declared one, and the graph makes sense."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from esfsm import model as m
from esfsm.checks.context import Context, Rule
from esfsm.findings import Finding, did_you_mean, one_of, pointer


def _state_refs(agg: m.Aggregate) -> Iterator[tuple[str, str]]:
    """(pointer, state name) for every state a definition names."""
    yield "/initial", agg.initial
    for event in agg.events.values():
        for i, source in enumerate(event.sources):
            if source != m.ANY_STATE:
                yield f"{event.where}/from/{i}", source
        if event.dest is not None:
            yield f"{event.where}/to", event.dest
    for command in agg.commands.values():
        for i, state in enumerate(command.in_states or ()):
            yield f"{command.where}/in/{i}", state


def _item(ctx: Context, ptr: str) -> str:
    """ptr ('.../from/0'), or its parent when the list was written as one string ('from: open')."""
    return ptr if ptr in ctx.doc.positions else ptr.rsplit("/", 1)[0]


def unknown_states(ctx: Context) -> Iterator[Finding]:
    states = ctx.aggregate.states
    for ptr, name in _state_refs(ctx.aggregate):
        if name not in states:
            hint = did_you_mean(name, states) or f"; expected one of {one_of(states)}"
            yield ctx.error(_item(ctx, ptr), f"{name!r} is not a declared state{hint}", "unknown-state")


def unknown_events(ctx: Context) -> Iterator[Finding]:
    events = ctx.aggregate.events
    for command in ctx.aggregate.commands.values():
        for emit in command.emits:
            if emit.event not in events:
                hint = did_you_mean(emit.event, events) or f"; expected one of {one_of(events)}"
                yield ctx.error(f"{emit.where}/event", f"{emit.event!r} is not a declared event{hint}", "unknown-event")


def final_state_exits(ctx: Context) -> Iterator[Finding]:
    states = ctx.aggregate.states
    for event in ctx.aggregate.events.values():
        for i, source in enumerate(event.sources):
            if source in states and states[source].final:
                yield ctx.error(
                    _item(ctx, f"{event.where}/from/{i}"),
                    f"event {event.name!r} leaves the final state {source!r}; no event may occur in a final state",
                    "final-state-exit",
                )


def unreachable_states(ctx: Context) -> Iterator[Finding]:
    agg = ctx.aggregate
    if agg.initial not in agg.states:
        return
    reached = {agg.initial}
    todo = deque([agg.initial])
    while todo:
        state = todo.popleft()
        for event in agg.events.values():
            dest = event.dest
            if dest is not None and state in agg.source_states(event) and dest in agg.states and dest not in reached:
                reached.add(dest)
                todo.append(dest)
    for name in agg.states:
        if name not in reached:
            yield ctx.warning(
                pointer("states", name),
                f"state {name!r} is unreachable from the initial state {agg.initial!r}",
                "unreachable-state",
            )


def unused_events(ctx: Context) -> Iterator[Finding]:
    emitted = {e.event for c in ctx.aggregate.commands.values() for e in c.emits}
    for event in ctx.aggregate.events.values():
        if event.name not in emitted and not event.retired:  # a retired event only replays
            yield ctx.warning(event.where, f"event {event.name!r} is emitted by no command", "unused-event")


RULES: tuple[Rule, ...] = (unknown_states, unknown_events, final_state_exits, unreachable_states, unused_events)
