"""What a compiled aggregate can do, read off its ``transitions`` Machine.

The authoring tools (``esfsm graph``, ``esfsm explain``) draw and describe the
very Machine the engine runs: its states, its triggers (one per event type) and
the commands that pull each trigger. The paths through a command's emits come
from :mod:`esfsm.paths`, the same walk the compiler accepts commands by.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from esfsm.compiler import CompiledAggregate
from esfsm.paths import EmitPaths, Path, Step

__all__ = [
    "Edge",
    "Path",
    "Step",
    "accepted_states",
    "command_paths",
    "command_steps",
    "count_paths",
    "edges",
    "states_without_in",
]


@dataclass(frozen=True)
class Edge:
    """A transition of the Machine, with the commands that can fire it from its source."""

    event: str
    source: str
    dest: str
    commands: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.event} ({', '.join(self.commands)})" if self.commands else self.event


def _walks(aggregate: CompiledAggregate, command: str) -> list[EmitPaths]:
    """The command's paths from each state it is accepted in, in declaration order."""
    compiled = aggregate.commands[command]
    return [
        EmitPaths(aggregate.next_state, start, compiled.model.emits)
        for start in aggregate.model.states
        if start in compiled.accepted_states
    ]


def command_paths(aggregate: CompiledAggregate, command: str, limit: int | None = None) -> list[Path]:
    """The valid paths of the command from each state it is accepted in, the first ``limit`` of them.

    States come in declaration order; for each, one path per choice of its
    conditional emits (taken before skipped) whose events are valid transitions
    in turn. A path with no step means every conditional emit was skipped.
    """
    paths: list[Path] = []
    for walk in _walks(aggregate, command):
        for path in walk.paths():
            if limit is not None and len(paths) >= limit:
                return paths
            paths.append(path)
    return paths


def count_paths(aggregate: CompiledAggregate, command: str) -> int:
    """How many paths :func:`command_paths` has without a limit (counted, not listed)."""
    return sum(walk.count() for walk in _walks(aggregate, command))


def command_steps(aggregate: CompiledAggregate, command: str) -> list[Step]:
    """Every step that lies on some path of the command, first shown first (not cut by any limit)."""
    return [step for walk in _walks(aggregate, command) for step in walk.steps()]


def edges(aggregate: CompiledAggregate) -> list[Edge]:
    """Every transition of the Machine, in event declaration order, then by source state.

    Each edge names the commands that can fire its event from its source: a
    transition no command reaches (an event emitted only from other states, or
    by no command at all) has none.
    """
    fired: dict[tuple[str, str], list[str]] = {}
    for name in aggregate.commands:
        for step in command_steps(aggregate, name):
            names = fired.setdefault((step.event, step.source), [])
            if name not in names:
                names.append(name)
    result = []
    for event in aggregate.model.events:
        for source, transitions in aggregate.machine.events[event].transitions.items():
            for transition in transitions:
                dest = transition.dest if transition.dest is not None else source
                result.append(Edge(event, source, dest, tuple(fired.get((event, source), ()))))
    return result


def accepted_states(aggregate: CompiledAggregate, command: str) -> list[str]:
    """The states the command is accepted in, in declaration order."""
    accepted = aggregate.commands[command].accepted_states
    return [s for s in aggregate.model.states if s in accepted]


def states_without_in(aggregate: CompiledAggregate, command: str) -> list[str]:
    """The states the command's events alone would allow, as if it had no ``in``."""
    model = aggregate.commands[command].model
    return aggregate.accepting_states(replace(model, in_states=None))
