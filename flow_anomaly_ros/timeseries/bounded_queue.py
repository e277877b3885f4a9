"""A FIFO with a hard capacity between taking input and scoring (ROS-free; the time-series node's input queue).

It sits on one thread after each round of takes (the node's input thread), or across threads from executor
callbacks to the scoring thread. ``put`` never blocks: when full, it refuses the item and counts a drop, so a flood
costs a counter, not memory, and the caller marks the dropped stretch INVALID_INPUT.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any


class BoundedQueue:
    """``put`` (refuses when full, counting ``dropped``), ``take_all`` (everything queued), ``wake``."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"queue capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.dropped = 0
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()

    def put(self, item: Any) -> bool:
        with self._cond:
            if len(self._items) >= self.capacity:
                self.dropped += 1
                return False
            self._items.append(item)
            self._cond.notify()
            return True

    def take_all(self, timeout: float) -> list[Any]:
        """Everything queued (waiting up to ``timeout`` seconds for at least one item)."""
        with self._cond:
            if not self._items and timeout > 0:
                self._cond.wait(timeout)
            items = list(self._items)
            self._items.clear()
            return items

    def wake(self) -> None:
        """Wake a ``take_all`` that is waiting (on stop)."""
        with self._cond:
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._items)
