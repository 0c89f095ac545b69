"""`Inbox`: the bounded queue between the frame sources (folder poller, DICOM receiver threads)
and the registration loop. When it is full the oldest item is dropped (latest frame wins: a
navigation display wants the newest anatomy, not a backlog) and handed back, so that the caller
writes a "dropped" record for it: no frame is lost silently."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Inbox", "Item"]


@dataclass
class Item:
    """A received object: a file path or a pydicom Dataset, with where and when it came."""

    payload: Any
    source: str
    source_id: str
    received_unix: float = field(default_factory=time.time)
    received_mono: float = field(default_factory=time.perf_counter)


class Inbox:
    """Thread-safe bounded FIFO; ``put`` returns the item it dropped to make room, or None."""

    def __init__(self, maxlen: int = 4) -> None:
        if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1:
            raise ValueError(f"inbox size must be an integer >= 1, got {maxlen!r}")
        self._items: deque[Item] = deque()
        self._maxlen = maxlen
        self._cond = threading.Condition()

    def put(self, item: Item) -> Item | None:
        with self._cond:
            dropped = self._items.popleft() if len(self._items) >= self._maxlen else None
            self._items.append(item)
            self._cond.notify()
            return dropped

    def get(self, timeout: float) -> Item | None:
        """The oldest item, waiting up to ``timeout`` s; None when there is none."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
