"""The older and the new state machine side by side: where an entity of the older one is under the new one."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from esfsm.evolution.definition import Definition, states_phrase
from esfsm.findings import Finding, pointer


class Product:
    """The product of the older and the new state machine from both initial states: each pair (s1, s2)
    says an entity the older definition has in s1 is in s2 under the new one. Every event valid in s1
    under the older definition (by each name it may be stored under) must be valid in s2."""

    def __init__(self, old: Definition, new: Definition) -> None:
        self.old, self.new = old, new
        start = (old.model.initial, new.model.initial)
        self.paths: dict[tuple[str, str], tuple[str, ...]] = {start: ()}
        self.failures: dict[str, tuple[tuple[str, ...], str, str, str]] = {}  # new event -> (path, name, s1, s2)
        todo = deque([start])
        while todo:
            pair = todo.popleft()
            todo.extend(self._steps(pair))  # each pair the first time it is reached

    def _steps(self, pair: tuple[str, str]) -> Iterator[tuple[str, str]]:
        s1, s2 = pair
        for event in self.old.model.events.values():
            t1 = self.old.compiled.next_state(s1, event.name)
            if t1 is None:
                continue
            for name in event.stored_names:
                reader = self.new.compiled.readers.get(name)
                if reader is None:
                    continue  # reported by stored_types
                path = (*self.paths[pair], name)
                t2 = self.new.compiled.next_state(s2, reader.name)
                if t2 is None:
                    self.failures.setdefault(reader.name, (path, name, s1, s2))
                    continue
                if (t1, t2) not in self.paths:
                    self.paths[(t1, t2)] = path
                    yield (t1, t2)

    def findings(self) -> Iterator[Finding]:
        new_states, old_reached = self.new.model.states, {s1 for s1, _ in self.paths}
        for name, (path, stored, s1, s2) in sorted(self.failures.items()):
            event = self.new.model.events[name]
            before = " → ".join(path[:-1])
            read_as = "" if stored == name else f" (read as {name!r})"
            where = (
                f"occurs in state {s1!r}, which this definition no longer allows"
                if s1 == s2
                else f"occurs in state {s1!r} under the older definition, but the entity is in {s2!r} under this "
                f"one, where {name!r} cannot occur"
            )
            yield self.new.error(
                self.new.written(f"{event.where}/from", event.where),
                "replaying a history valid under the older definition fails: "
                f"{f'after {before}' if before else 'as its first event'}, {stored!r}{read_as} {where}; let it "
                "occur there (`from`), or map the entity elsewhere with a retired event",
                "replay-transition",
            )
        mapped: dict[str, set[str]] = {}
        for (s1, s2), path in self.paths.items():
            if path and s1 != s2:
                mapped.setdefault(s1, set()).add(s2)
        for s1, targets in sorted(mapped.items()):
            kept = s1 in new_states
            side = self.new if kept else self.old
            yield side.warning(
                pointer("states", s1),
                f"state {s1!r}{'' if kept else ' is removed'}: entities the older definition has in {s1!r} are "
                f"in {states_phrase(sorted(targets))} under this one once replayed",
                "state-mapped",
            )
        for s1 in self.old.model.states:
            if s1 not in new_states and s1 not in old_reached and self._reachable_in_old(s1):
                yield self.old.error(
                    pointer("states", s1),
                    f"state {s1!r} is removed while entities may be in it, and the events that lead there are not "
                    "replayed by the new definition; map them out with a retired event whose `to` names a current "
                    "state",
                    "state-removed",
                )

    def _reachable_in_old(self, state: str) -> bool:
        compiled, seen = self.old.compiled, {self.old.model.initial}
        todo = deque(seen)
        while todo:
            here = todo.popleft()
            for event in self.old.model.events:
                there = compiled.next_state(here, event)
                if there is not None and there not in seen:
                    seen.add(there)
                    todo.append(there)
        return state in seen
