"""Memoization of the core's pure computations (plans, parsed profiles).

A memo never changes what :func:`~pdscaler.controller.core.tick.tick` decides, only how fast:
every value it holds is a pure function of its key. One :class:`Memo` lives as long as the
operator process (the shell owns it) or the replay.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

V = TypeVar("V")


class LRU(Generic[V]):
    """A small thread-safe least-recently-used cache.

    >>> cache: LRU[int] = LRU(2)
    >>> cache.get_or_compute("a", lambda: 1), cache.get_or_compute("a", lambda: 2)
    (1, 1)
    >>> cache.hits, cache.misses
    (1, 1)
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return None

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        found = self.get(key)
        if found is not None:
            return found
        value = compute()
        self.put(key, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


@dataclass
class Memo:
    """The core's caches: parsed profile documents and plans."""

    profiles: LRU[object] = field(default_factory=lambda: LRU(256))
    plans: LRU[object] = field(default_factory=lambda: LRU(1024))


__all__ = ["LRU", "Memo"]
