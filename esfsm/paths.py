"""The ways a command's emits can go from one state.

A command emits its events in order; an emit with ``if`` may be taken or
skipped, and every event taken must be a valid transition of the Machine from
where the previous one left the entity. A *path* is one such choice, from a
start state, whose events are all valid in turn. The compiler (where a command
is accepted), the docs (where it leaves the entity) and the authoring tools
(what ``esfsm explain`` and ``esfsm graph`` show) all read the paths from here.

Nothing here evaluates CEL: conditional emits are followed both ways, so a path
is what the definition allows, not what some data makes happen. The number of
paths can double with each conditional emit, so the questions the compiler and
the docs ask (:meth:`EmitPaths.steps`, :meth:`EmitPaths.ends`,
:meth:`EmitPaths.count`) are answered without listing the paths; only
:meth:`EmitPaths.paths` lists them, one at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache

from esfsm.model import Emit

NextState = Callable[[str, str], "str | None"]
"""Where an event leads from a state, or None when it is not a valid trigger there."""


@dataclass(frozen=True)
class Step:
    """One event fired by the emit at position ``emit``: the Machine moves from ``source`` to ``dest``."""

    emit: int
    event: str
    source: str
    dest: str


@dataclass(frozen=True)
class Path:
    """One way a command can go from a state: its events, in order (none when every emit was skipped)."""

    start: str
    steps: tuple[Step, ...]

    @property
    def end(self) -> str:
        return self.steps[-1].dest if self.steps else self.start


class EmitPaths:
    """The valid paths of ``emits`` from ``start``, given the Machine's ``next_state``.

    Everything is read off one count: how many valid ways remain from emit ``i``
    in state ``s`` (memoised, so at most one evaluation per emit and state). A
    branch with no way left is never entered.
    """

    def __init__(self, next_state: NextState, start: str, emits: Sequence[Emit]) -> None:
        self.start = start
        self._next = next_state
        self._emits = tuple(emits)
        self._ways = cache(self._count_ways)

    def _count_ways(self, index: int, state: str) -> int:
        if index == len(self._emits):
            return 1
        emit = self._emits[index]
        dest = self._next(state, emit.event)
        ways = self._ways(index + 1, dest) if dest is not None else 0
        if emit.condition:
            ways += self._ways(index + 1, state)
        return ways

    def _choices(self, index: int, state: str) -> Iterator[Step | None]:
        """The live choices at emit index in state: the step taken (first), None for skipped."""
        emit = self._emits[index]
        dest = self._next(state, emit.event)
        if dest is not None and self._ways(index + 1, dest):
            yield Step(index, emit.event, state, dest)
        if emit.condition and self._ways(index + 1, state):
            yield None

    def count(self) -> int:
        """How many valid paths there are."""
        return self._ways(0, self.start)

    def paths(self) -> Iterator[Path]:
        """Every valid path, lazily: each emit taken before skipped, the first emit varying slowest."""
        if not self.count():
            return
        yield from self._extend(0, self.start, ())

    def _extend(self, index: int, state: str, steps: tuple[Step, ...]) -> Iterator[Path]:
        if index == len(self._emits):
            yield Path(self.start, steps)
            return
        for step in self._choices(index, state):
            if step is None:
                yield from self._extend(index + 1, state, steps)
            else:
                yield from self._extend(index + 1, step.dest, (*steps, step))

    def _visit(self) -> tuple[list[Step], list[str]]:
        """The steps that lie on some valid path and the states the paths end in, both in
        the order the paths first show them; each (emit, state) is visited once."""
        steps: list[Step] = []
        ends: list[str] = []
        seen: set[tuple[int, str]] = set()

        def visit(index: int, state: str) -> None:
            if (index, state) in seen:
                return
            seen.add((index, state))
            if index == len(self._emits):
                ends.append(state)
                return
            for step in self._choices(index, state):
                if step is None:
                    visit(index + 1, state)
                else:
                    steps.append(step)
                    visit(index + 1, step.dest)

        if self.count():
            visit(0, self.start)
        return steps, ends

    def steps(self) -> list[Step]:
        """Every step that lies on some valid path, each once, first shown first."""
        return self._visit()[0]

    def ends(self) -> list[str]:
        """Every state a valid path ends in, each once, first shown first."""
        return self._visit()[1]

    def emits_an_event(self) -> bool:
        """Whether some valid path emits at least one event."""
        return bool(self.steps())
