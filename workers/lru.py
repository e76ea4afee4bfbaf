"""The few things a worker process keeps per job or per API, the least recently used dropped first.

`functools.lru_cache` does not fit them: its keys are the call's arguments (a job's API is a dict,
unhashable), it would keep a miss (a job not stored yet) as an answer, and it cannot drop one
entry (a finished job's predictor).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """At most `size` entries; reading or storing one makes it the most recently used."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        """The entry for `key`, now the most recently used; None if there is none."""
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: K, value: V) -> V:
        """Keep `value` for `key` as the most recently used, dropping the least recently used
        beyond `size`; returns `value`."""
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

    def keys(self) -> list[K]:
        """The keys, least recently used first (reading them does not make them used)."""
        return list(self._items)

    def values(self) -> list[V]:
        """The entries, least recently used first (reading them does not make them used)."""
        return list(self._items.values())

    def pop(self, key: K) -> None:
        """Drop the entry for `key`, if there is one."""
        self._items.pop(key, None)

    def pop_oldest(self) -> K | None:
        """Drop the least recently used entry; its key, or None if there is none."""
        if not self._items:
            return None
        key, _ = self._items.popitem(last=False)
        return key
