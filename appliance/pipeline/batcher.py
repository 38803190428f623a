"""Dynamic batching for the engine thread (Triton-style, with an idle-engine shortcut).

Items from every station go into one bounded FIFO; the engine thread asks for the next
batch whenever it is free. A batch closes at the first of:
  (a) `max_batch` items queued;
  (b) the oldest queued item has waited `max_wait_s` since it arrived (so items that
      queued while the engine was busy leave at once);
  (c) `adaptive` only: the next item is not expected before (b) - the typical gap
      between arrivals (median of the last few) says the batch will not fill, so
      sparse frames are not held back for nothing;
  (d) the batcher is draining (shutdown): whatever is queued leaves at once.
The decision is the pure function `decide`; `DynamicBatcher` adds the queue, the lock
and the timed waits.

Invariants:
- FIFO: items leave in the order they were offered (across stations), never reordered,
  never duplicated; a batch holds 1..max_batch items;
- at most `capacity` items are queued; `offer` never blocks (the caller records what it
  refuses), `put` waits for room on the caller's stop event;
- every wait is timed; `next_batch` returns (possibly empty) within its timeout.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Decision:
    """`take` items leave now (0: none); else decide again at `wake_at` (clock seconds)
    or when an item arrives (`wake_at` None)."""

    take: int
    wake_at: float | None


def decide(
    now: float,
    queued: int,
    oldest_arrival: float,
    last_arrival: float,
    typical_gap_s: float | None,
    *,
    max_batch: int,
    max_wait_s: float,
    adaptive: bool,
    draining: bool = False,
) -> Decision:
    """Whether the engine gets a batch now, and of how many items (see the module
    docstring for rules a-d). Times are seconds on one clock; `typical_gap_s` is None
    until two arrivals were seen (then rule c does not apply)."""
    if queued <= 0:
        return Decision(0, None)
    if queued >= max_batch:
        return Decision(max_batch, None)
    if draining:
        return Decision(queued, None)
    close_at = oldest_arrival + max_wait_s
    if now >= close_at:
        return Decision(queued, None)
    if adaptive and typical_gap_s is not None and last_arrival + typical_gap_s > close_at:
        return Decision(queued, None)
    return Decision(0, close_at)


class DynamicBatcher(Generic[T]):
    """A bounded FIFO that hands out batches by `decide`. Thread-safe.

    `clock` (seconds, monotonic) stamps arrivals and drives decisions; it is injectable
    so the rules can be tested with controlled time (`poll(now)`); the timed waits of
    `put` / `next_batch` use real time.
    """

    def __init__(
        self,
        *,
        max_batch: int,
        max_wait_s: float,
        capacity: int,
        adaptive: bool = True,
        clock: Callable[[], float] = time.perf_counter,
        gap_window: int = 8,
    ) -> None:
        if max_batch < 1 or capacity < 1 or max_wait_s < 0 or gap_window < 1:
            raise ValueError(
                f"need max_batch >= 1, capacity >= 1, max_wait_s >= 0, gap_window >= 1; got "
                f"{max_batch}, {capacity}, {max_wait_s}, {gap_window}"
            )
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.capacity = capacity
        self.adaptive = adaptive
        self._clock = clock
        self._items: deque[tuple[float, T]] = deque()
        self._cv = threading.Condition(threading.Lock())
        self._gaps: deque[float] = deque(maxlen=gap_window)
        self._typical_gap_s: float | None = None
        self._last_arrival: float | None = None
        self._draining = False
        self.offered = 0
        self.refused = 0
        self.batches = 0

    # -- producers -----------------------------------------------------------------

    def _append(self, item: T, at: float) -> None:
        if self._last_arrival is not None:
            self._gaps.append(max(0.0, at - self._last_arrival))
            self._typical_gap_s = statistics.median(self._gaps)
        self._last_arrival = at
        self._items.append((at, item))
        self.offered += 1
        self._cv.notify_all()

    def offer(self, item: T, at: float | None = None) -> bool:
        """Queue `item` if there is room (arrival time `at`, default now); never blocks.
        Returns False (and counts a refusal) when the queue is full."""
        with self._cv:
            if len(self._items) >= self.capacity:
                self.refused += 1
                return False
            self._append(item, self._clock() if at is None else at)
            return True

    def put(self, item: T, stop: threading.Event, poll_s: float = 0.05) -> bool:
        """Queue `item`, waiting for room (in steps of `poll_s`) until `stop` is set.
        Returns False if stopped before there was room (the item is not queued)."""
        with self._cv:
            while len(self._items) >= self.capacity:
                if stop.is_set():
                    return False
                self._cv.wait(poll_s)
            self._append(item, self._clock())
            return True

    # -- the engine ------------------------------------------------------------------

    def _decide(self, now: float) -> Decision:
        if not self._items:
            return Decision(0, None)
        return decide(
            now,
            len(self._items),
            self._items[0][0],
            self._last_arrival if self._last_arrival is not None else now,
            self._typical_gap_s,
            max_batch=self.max_batch,
            max_wait_s=self.max_wait_s,
            adaptive=self.adaptive,
            draining=self._draining,
        )

    def _pop(self, n: int) -> list[tuple[float, T]]:
        batch = [self._items.popleft() for _ in range(n)]
        self.batches += 1
        self._cv.notify_all()
        return batch

    def poll(self, now: float | None = None) -> tuple[list[tuple[float, T]], float | None]:
        """One non-blocking step: (the batch due at `now`, as (arrival, item) pairs, or
        []; when to poll again if nothing arrives, or None)."""
        with self._cv:
            d = self._decide(self._clock() if now is None else now)
            return (self._pop(d.take), None) if d.take else ([], d.wake_at)

    def next_batch(self, timeout_s: float = 0.1) -> list[tuple[float, T]]:
        """The next batch as (arrival, item) pairs, waiting up to `timeout_s` for one to
        be due; [] on timeout (the caller checks its stop conditions and asks again)."""
        give_up = time.monotonic() + timeout_s
        with self._cv:
            while True:
                now = self._clock()
                d = self._decide(now)
                if d.take:
                    return self._pop(d.take)
                left = give_up - time.monotonic()
                if left <= 0:
                    return []
                if d.wake_at is not None:
                    left = min(left, max(d.wake_at - now, 0.0))
                self._cv.wait(left if left > 0 else 0.0005)

    # -- shutdown ----------------------------------------------------------------------

    def set_draining(self, draining: bool = True) -> None:
        """While draining, queued items leave at once (no waiting for a batch to fill)."""
        with self._cv:
            self._draining = draining
            self._cv.notify_all()

    def drain(self) -> list[T]:
        """Remove and return everything queued, in order."""
        with self._cv:
            items = [item for _, item in self._items]
            self._items.clear()
            self._cv.notify_all()
            return items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def typical_gap_s(self) -> float | None:
        """Median gap between recent arrivals (seconds), None before two arrivals."""
        return self._typical_gap_s
