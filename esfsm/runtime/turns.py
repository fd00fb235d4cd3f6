"""Per-entity turns and the warm entities, with O(1) eviction.

Commands for one entity are decided in arrival order: each key has a FIFO
turn (`Turn`), which the fast path can take without awaiting. The entity kept
warm for a key lives in the same `Slot`. `Slots` holds at most `capacity`
slots, least recently used first out (a cachetools LRUCache: O(1) per
eviction, however many entities are warm). A slot whose turn is held when it
is evicted stays reachable until its turn is free, so a key never has two
turns at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from cachetools import Cache, LRUCache

from esfsm.runtime.entity import Entity

DEFAULT_CAPACITY = 100_000  # entities kept warm in memory per aggregate


class Turn:
    """First come, first served per entity key; try_acquire lets the fast path take a free
    turn without awaiting (asyncio.Lock has no such call)."""

    __slots__ = ("held", "waiters")

    def __init__(self) -> None:
        self.held = False
        self.waiters: deque[asyncio.Future[None]] = deque()

    def locked(self) -> bool:
        return self.held or bool(self.waiters)

    def try_acquire(self) -> bool:
        if self.held or self.waiters:
            return False
        self.held = True
        return True

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # handed to us just as we were cancelled: pass it on
            elif turn in self.waiters:
                self.waiters.remove(turn)
            raise

    def release(self) -> None:
        while self.waiters:
            turn = self.waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # handed over: still held
                return
        self.held = False


@dataclass(eq=False)
class Slot:
    key: str
    turn: Turn = field(default_factory=Turn)
    entity: Entity | None = None


class _Recent(LRUCache[str, Slot]):
    """An LRUCache that hands the slots it evicts while busy to `busy`."""

    def __init__(self, capacity: int, busy: dict[str, Slot]) -> None:
        super().__init__(maxsize=capacity)
        self.busy = busy

    def popitem(self) -> tuple[str, Slot]:
        key, slot = super().popitem()
        if slot.turn.locked():
            self.busy[key] = slot
        return key, slot


class Slots:
    """The slots of the entities used last, at most capacity of them (plus busy ones)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"the entity cache must hold at least 1 entity, got {capacity}")
        self._busy: dict[str, Slot] = {}  # evicted while their turn was held
        self._recent = _Recent(capacity, self._busy)

    @property
    def capacity(self) -> int:
        return int(self._recent.maxsize)

    def __len__(self) -> int:
        return len(self._recent) + len(self._busy)

    def __iter__(self) -> Iterator[str]:
        yield from self._recent
        yield from self._busy

    def peek(self, key: str) -> Slot | None:
        """The slot of key if there is one, without making it recent."""
        if key in self._recent:
            return Cache.__getitem__(self._recent, key)
        return self._busy.get(key)

    def get(self, key: str) -> Slot:
        """The slot of key, made the most recent; a new one if it has none."""
        slot = self._recent.get(key)  # LRUCache.get marks it used
        if slot is None:
            slot = self._busy.pop(key, None) or Slot(key)
            self._recent[key] = slot
        return slot

    def release(self, slot: Slot) -> None:
        """Pass slot's turn on; an evicted slot is dropped once nobody waits for it."""
        slot.turn.release()
        if not slot.turn.locked() and self._busy.get(slot.key) is slot:
            del self._busy[slot.key]

    def forget(self, key: str) -> None:
        self._recent.pop(key, None)
        self._busy.pop(key, None)
