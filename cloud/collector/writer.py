"""The collector's writer thread: take a batch of deliveries, validate, commit, then ack.

Invariants:
- A delivery is acknowledged only after the transaction holding it (as a stored
  message, a duplicate or a quarantine entry) has committed. A crash in between means
  the broker resends it, and the store's msg_id key makes the resend a duplicate.
- A transient store failure (locked, disk full) holds the batch and retries it with
  backoff, unacknowledged; a batch the database refuses is split, and a message it
  refuses on its own is quarantined as `store_rejected`. Nothing else is caught: an
  unexpected error ends the thread (the collector then exits, its batch unacknowledged).
- The queue is bounded; `get` waits are timed and check the stop flag.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cloud.collector.validate import STORE_REJECTED, Delivery, classify
from cloud.errors import StoreRejected, StoreUnavailable
from cloud.fleet import FleetStore, IngestResult, Received, Rejected
from cloud.fleet.rows import CONFLICTING_DUPLICATE
from protocol import topic_of
from protocol.backoff import Backoff, BackoffConfig

logger = logging.getLogger(__name__)

_POLL_S = 0.1
# A batch that found at least 1/N of its maximum already queued is "busy" (see _take).
_BUSY_FRACTION = 10


@dataclass
class WriterStats:
    """Counts since the writer started (the store's counters add up across restarts)."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    batches: int = 0
    acked: int = 0
    store_retries: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    last_batch_size: int = 0


class BatchWriter:
    """Runs on its own thread (`start`); see the module docstring."""

    def __init__(
        self,
        deliveries: queue.Queue[Delivery],
        store: FleetStore,
        ack: Callable[[Sequence[Delivery]], int],
        *,
        collector_id: str,
        batch_max_messages: int,
        batch_linger_ms: float,
        retry: BackoffConfig,
        busy_linger_ms: float = 0.0,
        take_counters: Callable[[], dict[str, int]] = dict,
        on_committed: Callable[[Sequence[Delivery], IngestResult], None] | None = None,
    ) -> None:
        self._queue = deliveries
        self._store = store
        self._ack = ack
        self._collector_id = collector_id
        self._batch_max = batch_max_messages
        self._linger_s = batch_linger_ms / 1000.0
        self._retry = retry
        self._busy_linger_s = busy_linger_ms / 1000.0
        self._take_counters = take_counters
        self._on_committed = on_committed
        self._stop = threading.Event()
        # Set on stop: how many more deliveries to drain, and until when.
        self._drain_left = 0
        self._drain_deadline = 0.0
        self.stats = WriterStats()
        self._thread = threading.Thread(target=self._run, name="collector-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float) -> bool:
        """Commit and ack what is queued now (not what arrives later), then end the
        thread. Returns False if that did not finish within `timeout_s`."""
        self._drain_left = self._queue.qsize()
        self._drain_deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._thread.join(timeout_s + 1.0)
        return not self._thread.is_alive()

    # ---- the thread

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            if stopping and (self._drain_left <= 0 or time.monotonic() > self._drain_deadline):
                return
            limit = min(self._batch_max, self._drain_left) if stopping else self._batch_max
            batch = self._take(limit, linger=not stopping)
            if stopping:
                if not batch:
                    return  # the queue is empty: everything there at stop time is done
                self._drain_left -= len(batch)
            if batch:
                self._process(batch)

    def _take(self, limit: int, *, linger: bool) -> list[Delivery]:
        try:
            first = self._queue.get(timeout=_POLL_S)
        except queue.Empty:
            return []
        batch = [first]
        started = time.monotonic()
        linger_until = started + (self._linger_s if linger else 0.0)
        busy = False
        while len(batch) < limit:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            if linger and not busy and len(batch) >= max(2, limit // _BUSY_FRACTION):
                # Messages arrive faster than batches commit: wait a little for more,
                # since a commit costs much the same for 50 messages as for 500.
                busy = True
                linger_until = max(linger_until, started + self._busy_linger_s)
            left = linger_until - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=left))
            except queue.Empty:
                break
        return batch

    def _process(self, batch: list[Delivery]) -> None:
        received, rejected = classify(batch)
        counters = self._take_counters()
        result = self._commit(received, rejected, counters)
        if result is None:
            return  # stopping with the store down: unacknowledged, the broker resends
        self.stats.acked += self._ack(batch)
        s = self.stats
        s.batches += 1
        s.received += len(batch)
        s.stored += result.stored
        s.duplicates += result.duplicates
        s.quarantined += result.quarantined
        s.last_batch_size = len(batch)
        for item in rejected:
            s.quarantined_by_reason[item.reason] = s.quarantined_by_reason.get(item.reason, 0) + 1
        if result.conflicting:
            s.quarantined_by_reason[CONFLICTING_DUPLICATE] = (
                s.quarantined_by_reason.get(CONFLICTING_DUPLICATE, 0) + result.conflicting)
        if self._on_committed is not None:
            self._on_committed(batch, result)

    def _commit(
        self, received: list[Received], rejected: list[Rejected], counters: dict[str, int]
    ) -> IngestResult | None:
        backoff = Backoff(self._retry)
        split = False
        while True:
            try:
                if split:
                    return self._commit_one_by_one(received, rejected, counters)
                return self._store.ingest(
                    received, rejected, collector_id=self._collector_id, counters=counters
                )
            except StoreRejected as e:
                if split:
                    raise  # even the quarantine rows were refused: not the data's fault
                logger.warning("the store refused a batch of %d (%s); storing one by one",
                               len(received) + len(rejected), e)
                split = True
            except StoreUnavailable as e:
                self.stats.store_retries += 1
                if self._stop.is_set() and time.monotonic() > self._drain_deadline:
                    logger.error("stopping with %d messages not stored (%s); the broker "
                                 "keeps them for the next run", len(received), e)
                    return None
                delay_s = backoff.next_delay_s()
                logger.warning("fleet store unavailable (%s); retrying in %.1f s", e, delay_s)
                time.sleep(delay_s)

    def _commit_one_by_one(
        self, received: list[Received], rejected: list[Rejected], counters: dict[str, int]
    ) -> IngestResult:
        """Each message in its own transaction; the ones refused alone are quarantined.
        StoreUnavailable propagates (the caller retries the whole batch: what was
        stored meanwhile then counts as duplicates)."""
        stored = duplicates = conflicting = 0
        refused = list(rejected)
        for item in received:
            try:
                r = self._store.ingest([item], collector_id=self._collector_id)
            except StoreRejected as e:
                refused.append(Rejected(
                    topic_of(item.message), item.payload, STORE_REJECTED, str(e),
                    item.received_at_ms,
                ))
                continue
            stored += r.stored
            duplicates += r.duplicates
            conflicting += r.conflicting
        last = self._store.ingest([], refused, collector_id=self._collector_id, counters=counters)
        return IngestResult(stored, duplicates, last.quarantined + conflicting,
                            last.stored_at_ms, conflicting)
