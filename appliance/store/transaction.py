"""Work that another component runs inside the store writer's transaction.

The store is the one writer of its SQLite file. A component that keeps its own table in
that file (the telemetry outbox) does not open a second write connection: it hands the
writer a `Work` function with `Store.transact` and gets a `Pending` back. The writer
runs the function on its thread, inside the transaction of its next batch (in a
savepoint of its own), and resolves the `Pending` once that transaction has committed.

Invariants:
- A `Pending` is resolved exactly once, and only after the outcome is final: with the
  function's return value once the transaction holding its writes has committed (durable
  against a process kill, as every store commit), or with a StoreError when its writes
  were rolled back (the function raised; the batch was abandoned on stop; the writer
  died). A rolled-back function left nothing in the database.
- A function may run more than once (the writer retries a batch after a transient
  SQLite error, or re-runs a batch row by row): it must not change Python state, only
  compute and return. The caller applies the returned value when the `Pending` resolves.
- An exception from the function fails that function's `Pending` only; the batch's
  verdicts and the other functions commit. Only `sqlite3.OperationalError` (busy, disk
  full, I/O) fails the whole batch, which is then retried.
- `on_done` runs on the writer thread right after resolution: it must be quick and must
  not raise (e.g. set an event).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from appliance.errors import StoreError

T = TypeVar("T")

Work = Callable[[sqlite3.Connection], T]
"""Runs on the writer thread with the write connection, inside an open transaction.
Must not begin, commit or roll back; may raise."""


class Pending(Generic[T]):
    """The outcome of one `Work` (see the module docstring). Thread-safe."""

    def __init__(
        self,
        work: Work[T],
        on_done: Callable[[], None] | None = None,
        *,
        hurry: Callable[[float], bool] | None = None,
    ) -> None:
        self.work = work
        self._on_done = on_done
        self._hurry = hurry  # asks the writer to commit now; waits up to the timeout
        self._event = threading.Event()
        self._value: T | None = None
        self._error: StoreError | None = None

    def done(self) -> bool:
        """Whether the outcome is known (committed or rolled back)."""
        return self._event.is_set()

    def result(self, timeout_s: float) -> T:
        """The function's value once committed. Waits up to `timeout_s` (asking the writer
        to commit at once). Raises StoreError if it was rolled back, or if the outcome is
        not known in time (the work may still commit later)."""
        if not self._event.is_set() and self._hurry is not None and timeout_s > 0:
            self._hurry(timeout_s)
        if not self._event.wait(timeout_s):
            raise StoreError(f"store transaction not committed within {timeout_s:.1f} s")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set with the event

    # ------------------------------------------------------------------ writer side
    def resolve(self, value: T) -> None:
        """Committed with `value` (writer thread)."""
        self._value = value
        self._finish()

    def fail(self, error: StoreError) -> None:
        """Rolled back (writer thread, or the store's stop)."""
        self._error = error
        self._finish()

    def _finish(self) -> None:
        if self._event.is_set():
            return
        self._event.set()
        if self._on_done is not None:
            self._on_done()
