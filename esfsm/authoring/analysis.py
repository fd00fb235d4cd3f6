"""What a compiled aggregate can do, read off its ``transitions`` Machine.

The authoring tools (``esfsm graph``, ``esfsm explain``) draw and describe the
very Machine the engine runs: its states, its triggers (one per event type) and
the commands that pull each trigger. Nothing here evaluates CEL: conditional
emits are followed both ways, so a path is what the definition allows, not what
some data makes happen.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from esfsm.compiler import CompiledAggregate

# Past this many conditional emits in one command, only the choice "every emit taken" is
# followed, to bound the work (2**12 choices per state is more than any real command needs).
MAX_CHOICES = 12


@dataclass(frozen=True)
class Step:
    """One event fired by the emit at position ``emit``: the Machine moves from ``source`` to ``dest``."""

    emit: int
    event: str
    source: str
    dest: str


@dataclass(frozen=True)
class Path:
    """One way a command can go from a state it is accepted in: its events, in order."""

    start: str
    steps: tuple[Step, ...]

    @property
    def end(self) -> str:
        return self.steps[-1].dest if self.steps else self.start


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


def command_paths(aggregate: CompiledAggregate, command: str) -> list[Path]:
    """Every valid path of the command from each state it is accepted in.

    States come in declaration order; for each, one path per choice of its
    conditional emits (taken before skipped) whose events are valid transitions
    in turn. A path with no step means every conditional emit was skipped.
    """
    compiled = aggregate.commands[command]
    emits = compiled.model.emits
    options = [(True, False) if e.condition else (True,) for e in emits]
    if sum(len(o) > 1 for o in options) > MAX_CHOICES:  # pragma: no cover - no real definition is that wide
        options = [(True,) for _ in emits]
    paths = []
    for start in aggregate.model.states:
        if start not in compiled.accepted_states:
            continue
        for choice in itertools.product(*options):
            steps = _walk(aggregate, start, [(i, e.event) for i, (e, take) in enumerate(zip(emits, choice)) if take])
            if steps is not None:
                paths.append(Path(start, steps))
    return paths


def _walk(aggregate: CompiledAggregate, start: str, emits: list[tuple[int, str]]) -> tuple[Step, ...] | None:
    """The steps of firing the emits' events in turn from start, or None if one is not a valid transition."""
    steps = []
    state = start
    for index, event in emits:
        dest = aggregate.next_state(state, event)
        if dest is None:
            return None
        steps.append(Step(index, event, state, dest))
        state = dest
    return tuple(steps)


def edges(aggregate: CompiledAggregate) -> list[Edge]:
    """Every transition of the Machine, in event declaration order, then by source state.

    Each edge names the commands that can fire its event from its source: a
    transition no command reaches (an event emitted only from other states, or
    by no command at all) has none.
    """
    fired: dict[tuple[str, str], list[str]] = {}
    for name in aggregate.commands:
        for path in command_paths(aggregate, name):
            for step in path.steps:
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
