"""What to hand the broker next: live messages first, then the backlog at a bounded rate,
within a bounded window of unacknowledged messages. Used by the publisher's worker only
(not thread-safe).

- Live rows are those written to the outbox while connected (after the connect was
  noticed); they wait in memory for room in the window.
- The backlog is every row with an id up to the newest one at the time of the connect,
  read from the outbox in id order (oldest first), at most `backlog_rate_per_s` per
  second and `backlog_inflight_max` at a time.
- A row in flight is never handed over again on the same client (paho re-sends it after
  a reconnect); `forget` drops that knowledge when the client is replaced.
- Retained messages: one older than a row already sent retained on its topic is sent
  without the retain flag, so the broker keeps the newest.
- After a reconnect (not the first connect) nothing is sent for `reconnect_settle_s`; a
  row that was in flight at the disconnect (paho re-sends it at once) is not deleted on
  that PUBACK but sent again with the backlog after the settle (a duplicate, never a
  loss).
- A row acknowledged "no matching subscribers" (`unrouted`) stays in the outbox: nothing
  is sent for `unrouted_retry_s`, then everything in the outbox is the backlog again
  (sent oldest first at the backlog rate; rows still in flight are skipped).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from appliance.telemetry.config import TelemetryConfig
from appliance.telemetry.errors import OutboxUnavailable
from appliance.telemetry.outbox import Outbox, OutboxRow

logger = logging.getLogger(__name__)

Publish = Callable[[str, bytes, int, bool], "int | None"]
"""(topic, payload, qos, retain) -> mid, or None if the client did not take it."""

_BACKLOG_CHUNK = 256


@dataclass(frozen=True, slots=True)
class InFlight:
    """A row handed to the client, waiting for its PUBACK."""

    row_id: int
    backlog: bool
    topic: str
    cut: bool = False
    """It was in flight when the connection went down: paho re-sends it the moment it
    reconnects, before the collectors can have subscribed again, so its PUBACK does not
    prove delivery (see `disconnected`)."""


class SendWindow:
    """See the module docstring."""

    def __init__(self, cfg: TelemetryConfig, outbox: Outbox, publish: Publish) -> None:
        self._cfg = cfg
        self._outbox = outbox
        self._publish = publish
        self.up = False
        self.live: deque[OutboxRow] = deque()
        self._live_max = max(1000, 4 * cfg.inflight_max)
        self.inflight: dict[int, InFlight] = {}
        self._inflight_rows: set[int] = set()
        self._backlog_inflight = 0
        self._backlog_end: int | None = None  # None: read it before the next send
        self._backlog_cursor = 0
        self._backlog_buf: deque[OutboxRow] = deque()
        self._tokens = 0.0
        self._tokens_at = time.monotonic()
        self._retained_high: dict[str, int] = {}
        self._paused_until = 0.0  # after a reconnect, an unrouted PUBACK (monotonic)
        self._connects = 0
        self.published = 0
        self.waiting_for_room = False
        """Rows wait because the window is full (read from paho's thread: a PUBACK then
        wakes the worker at once)."""

    # ------------------------------------------------------------------ connection
    def connected(self) -> None:
        """A new connection: everything in the outbox now is the backlog (sent after
        `reconnect_settle_s` on a reconnect)."""
        self.up = True
        self._connects += 1
        if self._connects > 1:
            self._paused_until = time.monotonic() + self._cfg.reconnect_settle_s
        self._reset_backlog()
        self._tokens = 0.0
        self._tokens_at = time.monotonic()

    def disconnected(self) -> None:
        """Rows waiting in memory are in the outbox; the next connect reads them back.
        Rows in flight are marked `cut`: paho re-sends them at once on reconnect, inside
        `reconnect_settle_s`, where a broker that lost the collectors' shared
        subscriptions acknowledges them for any other subscriber (a monitor) and the
        collectors never get them. Their rows stay in the outbox on that PUBACK and are
        sent again with the backlog, after the settle."""
        self.up = False
        self.waiting_for_room = False
        self.inflight = {mid: replace(e, cut=True) for mid, e in self.inflight.items()}
        self._reset_backlog()

    def forget(self) -> None:
        """The client was replaced: its unacknowledged messages are gone."""
        self.inflight.clear()
        self._inflight_rows.clear()
        self._backlog_inflight = 0
        self.disconnected()

    def unrouted(self, now: float) -> None:
        """A PUBACK said "no matching subscribers": pause, then send the outbox again
        from its oldest row."""
        self._paused_until = now + self._cfg.unrouted_retry_s
        self._reset_backlog()

    def _reset_backlog(self) -> None:
        self.live.clear()
        self._backlog_buf.clear()
        self._backlog_end = None
        self._backlog_cursor = 0

    # ------------------------------------------------------------------ rows
    def admitted(self, rows: Iterable[OutboxRow], evicted_ids: Iterable[int]) -> None:
        """Rows just committed to the outbox (live if connected and newer than the
        backlog), and rows the bound evicted (never to be sent)."""
        gone = set(evicted_ids)
        if gone:
            self.live = deque(r for r in self.live if r.id not in gone)
            self._backlog_buf = deque(r for r in self._backlog_buf if r.id not in gone)
        end = self._backlog_end
        if self.up and end is not None:
            # a row committed before the backlog's end was read is the backlog's to send
            self.live.extend(r for r in rows if r.id > end and r.id not in gone)
            if len(self.live) > self._live_max:  # the broker is slow: the backlog takes over
                self._backlog_end = max(end, self.live[-1].id)
                self.live.clear()

    def acknowledged(self, mid: int) -> InFlight | None:
        """The row behind a PUBACK's mid (None: the status, or a replaced client's)."""
        entry = self.inflight.pop(mid, None)
        if entry is not None:
            self._inflight_rows.discard(entry.row_id)
            self._backlog_inflight -= int(entry.backlog)
        return entry

    # ------------------------------------------------------------------ sending
    def backlog_waiting(self) -> bool:
        end = self._backlog_end
        return end is None or bool(self._backlog_buf) or self._backlog_cursor < end

    def wait_s(self, idle_s: float) -> float:
        """How long the worker may sleep before `fill` has something to send."""
        if not self.up:
            return idle_s
        pause_s = self._paused_until - time.monotonic()
        if pause_s > 0.0:
            return min(idle_s, pause_s)
        if not self.backlog_waiting():
            return idle_s
        if len(self.inflight) >= self._cfg.inflight_max or \
                self._backlog_inflight >= self._cfg.backlog_inflight_max:
            return idle_s  # a PUBACK wakes the worker
        if self._tokens < 1.0:
            return min(idle_s, (1.0 - self._tokens) / self._cfg.backlog_rate_per_s)
        return 0.0

    def fill(self, now: float) -> list[int]:
        """Hand rows to the client while the window has room; returns their ids."""
        sent = self._fill(now)
        cfg = self._cfg
        full = len(self.inflight) >= cfg.inflight_max or \
            self._backlog_inflight >= cfg.backlog_inflight_max
        self.waiting_for_room = bool(self.live) or (full and self.backlog_waiting())
        return sent

    def _fill(self, now: float) -> list[int]:
        sent: list[int] = []
        if now < self._paused_until:
            self._tokens_at = now  # no backlog credit builds up during a pause
            return sent
        cap = self._cfg.inflight_max
        while self.live and len(self.inflight) < cap:
            row = self.live.popleft()
            if not self._send(row, backlog=False):
                self.live.appendleft(row)
                return sent
            sent.append(row.id)
        if self._backlog_end is None:
            try:
                self._backlog_end = self._outbox.max_id()
            except OutboxUnavailable as e:
                logger.warning("%s", e)
                return sent
            self._backlog_cursor = 0
        self._tokens = min(float(self._cfg.backlog_inflight_max),
                           self._tokens + (now - self._tokens_at) * self._cfg.backlog_rate_per_s)
        self._tokens_at = now
        while (len(self.inflight) < cap and self._tokens >= 1.0
               and self._backlog_inflight < self._cfg.backlog_inflight_max):
            old = self._next_backlog_row()
            if old is None:
                break
            if not self._send(old, backlog=True):
                self._backlog_buf.appendleft(old)
                break
            self._tokens -= 1.0
            sent.append(old.id)
        return sent

    def _next_backlog_row(self) -> OutboxRow | None:
        end = self._backlog_end
        while end is not None:
            while self._backlog_buf:
                row = self._backlog_buf.popleft()
                if row.id not in self._inflight_rows:
                    return row
            if self._backlog_cursor >= end:
                return None
            try:
                rows = self._outbox.backlog(self._backlog_cursor, end, _BACKLOG_CHUNK)
            except OutboxUnavailable as e:
                logger.warning("%s", e)
                return None
            if not rows:
                self._backlog_cursor = end
                return None
            self._backlog_cursor = rows[-1].id
            self._backlog_buf.extend(rows)
        return None

    def _send(self, row: OutboxRow, *, backlog: bool) -> bool:
        retain = row.retain
        if retain:
            if row.id < self._retained_high.get(row.topic, 0):
                retain = False  # a newer one is already the broker's retained copy
            else:
                self._retained_high[row.topic] = row.id
        mid = self._publish(row.topic, row.payload, row.qos, retain)
        if mid is None:
            return False
        self.acknowledged(mid)  # a mid that wrapped around a message paho still holds
        self.inflight[mid] = InFlight(row.id, backlog, row.topic)
        self._inflight_rows.add(row.id)
        self._backlog_inflight += int(backlog)
        self.published += 1
        return True
