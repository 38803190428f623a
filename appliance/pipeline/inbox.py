"""Bounded queues between stages, with timed waits that check a stop event.

Every stage owns its inbox (a bounded FIFO it takes work from) and is handed its outbox
(the next stage's inbox). `Inbox` is the plain one; the engine's inbox is the
`DynamicBatcher`, which has the same producer side (`Outbox`); `Inline` is the outbox
that runs the next stage's work in the producer's thread.

Invariants:
- at most `capacity` items are queued; `offer` never blocks; `put` waits for room in
  steps of `poll_s`, checking `stop`, and says whether the item went in;
- `get` returns within its timeout (None when nothing came); items are never None;
- FIFO: items leave in the order they were queued, each once.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)

POLL_S = 0.05
"""How often a waiting stage looks at its stop event (seconds)."""


class Outbox(Protocol[T_contra]):
    """The producer side of a stage's inbox."""

    def offer(self, item: T_contra) -> bool:
        """Queue `item` if there is room; never blocks."""
        ...

    def put(self, item: T_contra, stop: threading.Event, poll_s: float = POLL_S) -> bool:
        """Queue `item`, waiting for room until `stop` is set; False if stopped first."""
        ...


class Inbox(Generic[T]):
    """A bounded FIFO (see the module docstring). Thread-safe."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"an inbox needs capacity >= 1, got {capacity}")
        self.capacity = capacity
        self._q: queue.Queue[T] = queue.Queue(maxsize=capacity)

    def offer(self, item: T) -> bool:
        try:
            self._q.put_nowait(item)
        except queue.Full:
            return False
        return True

    def put(self, item: T, stop: threading.Event, poll_s: float = POLL_S) -> bool:
        while not stop.is_set():
            try:
                self._q.put(item, timeout=poll_s)
            except queue.Full:
                continue
            return True
        return False

    def get(self, timeout_s: float = POLL_S) -> T | None:
        """The next item, or None if none came within `timeout_s`."""
        try:
            return self._q.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def drain(self) -> list[T]:
        """Remove and return everything queued, in order."""
        items: list[T] = []
        while True:
            try:
                items.append(self._q.get_nowait())
            except queue.Empty:
                return items

    def __len__(self) -> int:
        return self._q.qsize()


class Inline(Generic[T]):
    """An outbox that hands each item straight to `consume` in the producer's thread:
    no queue, no thread hand-off. On a CPU where inference already keeps every core
    busy, a second thread only preempts ONNX Runtime's threads (whose parallel ops then
    wait for the slowest one), so the engine stage finishes its own batches."""

    def __init__(self, consume: Callable[[T], None]) -> None:
        self._consume = consume

    def offer(self, item: T) -> bool:
        self._consume(item)
        return True

    def put(self, item: T, stop: threading.Event, poll_s: float = POLL_S) -> bool:
        self._consume(item)
        return True
