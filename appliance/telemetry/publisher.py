"""The publisher: from any thread into the outbox, and from the outbox to the broker.

Threads:
- producers (the pipeline's verdict sink, the metrics ticker, the updater) call
  `submit(kind, build)`: an append to a bounded in-memory deque, never a wait. When the
  deque is full the message is refused and counted as dropped (by kind).
- the worker ("telemetry-outbox") builds the messages, writes them to the outbox in one
  short transaction per turn (together with the deletes of acknowledged rows), and feeds
  the connection: live messages (written while connected) first, then the backlog (rows
  written while disconnected or before a restart), oldest first, at most
  `backlog_rate_per_s` and `backlog_inflight_max` at a time, all within `inflight_max`
  unacknowledged messages.
- paho's network thread reports connects, disconnects and PUBACKs; it only leaves a note
  for the worker.

Invariants:
- Nothing is published that is not in the outbox; a row is deleted only after its PUBACK.
- On one client a row is handed to paho once: paho itself re-sends unacknowledged
  messages after a reconnect, so rows in flight are skipped by the backlog scan. A
  process restart or a replaced client sends them again: duplicates are possible, losses
  are not (consumers de-duplicate on `msg_id`).
- A retained message older than one already published on its topic goes out without the
  retain flag, so the broker's retained copy is always the newest.
- A negative PUBACK (MQTT 5 reason >= 0x80) keeps the row: it is counted, logged, and
  sent again after the next reconnect.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from appliance.records import EventValue, Severity
from appliance.telemetry.config import TelemetryConfig
from appliance.telemetry.connection import BrokerConnection
from appliance.telemetry.errors import OutboxUnavailable
from appliance.telemetry.outbox import NewMessage, Outbox, OutboxRow, WriteResult
from protocol import Message, Outgoing, ProtocolError, prepare

logger = logging.getLogger(__name__)

Build = Callable[[], Message]
"""Builds one message; runs on the worker thread (keeps the producer's cost tiny)."""
EventSink = Callable[[str, Severity, str, dict[str, EventValue]], None]
"""(kind, severity, message, data): an appliance event (recorded in the store)."""

_IDLE_WAIT_S = 0.25
_BACKLOG_CHUNK = 256
_RETRY_MAX_S = 5.0


@dataclass(frozen=True, slots=True)
class _InFlight:
    row_id: int
    backlog: bool


@dataclass(frozen=True)
class PublisherStats:
    """Counters since start, for the panel and tests."""

    connected: bool
    outbox_depth: int
    pending: int
    inflight: int
    live_waiting: int
    published: int
    acknowledged: int
    rejected: int
    duplicates: int
    invalid: int
    dropped: dict[str, int]
    write_errors: int
    last_error: str | None


class Publisher:
    """See the module docstring. `first_message` (the online status) and `will` (the
    offline status) are built per connection by the owner; `on_event` records what an
    operator should see (offline for long, rejected messages)."""

    def __init__(
        self,
        cfg: TelemetryConfig,
        outbox: Outbox,
        *,
        client_id: str,
        will: Callable[[], Outgoing],
        first_message: Callable[[], Outgoing | None],
        on_event: EventSink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = cfg
        self._outbox = outbox
        self._clock = clock
        self._on_event = on_event
        self.connection = BrokerConnection(
            cfg, client_id=client_id, will=will, first_message=first_message,
            on_up=self._note_up, on_down=self._note_down, on_ack=self._note_ack,
        )
        self._pending: deque[tuple[str, Build]] = deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._closed = False
        self._lock = threading.Lock()  # notes from paho, dropped counters
        self._notes: list[tuple[str, int, bool, str]] = []
        self._dropped_window: Counter[str] = Counter()
        self._dropped_total: Counter[str] = Counter()
        # worker-only state
        self._up = False
        self._live: deque[OutboxRow] = deque()
        self._live_max = max(1000, 4 * cfg.inflight_max)
        self._inflight: dict[int, _InFlight] = {}
        self._inflight_rows: set[int] = set()
        self._backlog_inflight = 0
        self._backlog_end: int | None = None  # None: to be read at the next send
        self._backlog_cursor = 0
        self._backlog_buf: deque[OutboxRow] = deque()
        self._tokens = 0.0
        self._tokens_at = time.monotonic()
        self._retained_high: dict[str, int] = {}
        self._retry_at = 0.0
        self._retry_s = 0.0
        self._next_write_at = 0.0
        self._offline_alarmed = False
        self._carry: list[NewMessage] = []  # built, not yet written (a failed write)
        self._thread: threading.Thread | None = None
        self.published = 0
        self.acknowledged = 0
        self.rejected = 0
        self.duplicates = 0
        self.invalid = 0
        self.write_errors = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ producers
    def submit(self, kind: str, build: Build) -> bool:
        """Hand one message over (any thread, never blocks). `kind` is its topic kind
        (for the loss count if it is refused). Returns False if it was refused: the
        publisher is stopped or `pending_max` messages are already waiting."""
        if self._closed or len(self._pending) >= self._cfg.pending_max:
            self._count_dropped({kind: 1})
            return False
        self._pending.append((kind, build))
        if not self._wake.is_set():
            self._wake.set()
        return True

    def take_dropped(self) -> dict[str, int]:
        """Messages lost (refused or evicted) since the last call, by kind."""
        with self._lock:
            dropped, self._dropped_window = dict(self._dropped_window), Counter()
        return dropped

    def stats(self) -> PublisherStats:
        with self._lock:
            dropped = dict(self._dropped_total)
        return PublisherStats(
            connected=self.connection.connected,
            outbox_depth=self._outbox.depth,
            pending=len(self._pending),
            inflight=len(self._inflight),
            live_waiting=len(self._live),
            published=self.published,
            acknowledged=self.acknowledged,
            rejected=self.rejected,
            duplicates=self.duplicates,
            invalid=self.invalid,
            dropped=dropped,
            write_errors=self.write_errors,
            last_error=self.last_error,
        )

    @property
    def pending(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the worker and the connection (connecting in the background).
        Raises TelemetryError (e.g. unreadable TLS files)."""
        if self._thread is not None:
            return
        self.connection.start()
        self._thread = threading.Thread(target=self._run, name="telemetry-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Refuse new messages, write every handed-over one to the outbox, wait up to
        `stop_grace_s` for live and in-flight messages to be acknowledged, and end the
        worker. The connection stays up (the owner publishes the offline status, then
        calls `connection.stop`). Returns False if messages could not be written."""
        self._closed = True
        self._stopping.set()
        self._wake.set()
        if self._thread is None:
            return not self._pending
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.error("telemetry worker did not stop in %.1f s", timeout_s)
            return False
        return not self._pending and not self._carry

    # ------------------------------------------------------------------ paho notes
    def _note(self, kind: str, mid: int = 0, ok: bool = True, reason: str = "") -> None:
        with self._lock:
            self._notes.append((kind, mid, ok, reason))
        self._wake.set()

    def _note_up(self) -> None:
        self._note("up")

    def _note_down(self, reason: str) -> None:
        self._note("down", reason=reason)

    def _note_ack(self, mid: int, ok: bool, reason: str) -> None:
        self._note("ack", mid, ok, reason)

    def _count_dropped(self, dropped: dict[str, int]) -> None:
        with self._lock:
            self._dropped_window.update(dropped)
            self._dropped_total.update(dropped)

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        acked: list[int] = []
        sent: list[int] = []
        grace_until: float | None = None
        hard_until: float | None = None
        while True:
            hold_s = self._hold_s()
            if hold_s > 0.0:  # batch writes: producers do not wake us during this
                self._stopping.wait(hold_s)
            else:
                self._wake.wait(self._wait_s())
            self._wake.clear()
            now = time.monotonic()
            if self._stopping.is_set() and grace_until is None:
                grace_until = now + self._cfg.stop_grace_s
                hard_until = now + max(self._cfg.stop_grace_s, 10.0)
            if grace_until is None and self.connection.supervise():
                self._forget_inflight()
            self._handle_notes(acked)
            self._watch_offline()
            self._carry.extend(self._build_pending())
            due = now >= self._retry_at and (now >= self._next_write_at or bool(grace_until))
            if (self._carry or acked or sent) and due and self._write(acked, sent):
                acked, sent = [], []
            if self._up:
                sent.extend(self._fill_window(now))
            if grace_until is not None and hard_until is not None:
                unwritten = bool(self._pending or self._carry)
                settled = not self._up or (not self._live and not self._inflight)
                if (not unwritten and (settled or now >= grace_until)) or now >= hard_until:
                    break
        if acked or sent or self._carry:
            self._write(acked, sent)
        if self._carry or self._pending:
            logger.error("telemetry stopped with %d messages not written to the outbox",
                         len(self._carry) + len(self._pending))

    def _hold_s(self) -> float:
        if self._stopping.is_set() or not (self._pending or self._carry):
            return 0.0
        return max(self._retry_at, self._next_write_at) - time.monotonic()

    def _wait_s(self) -> float:
        if self._stopping.is_set():
            return 0.01
        if self._pending or self._carry:
            return 0.0
        if self._up and self._backlog_waiting() and len(self._inflight) < self._cfg.inflight_max:
            if self._tokens < 1.0:
                return min(_IDLE_WAIT_S, (1.0 - self._tokens) / self._cfg.backlog_rate_per_s)
            if self._backlog_inflight < self._cfg.backlog_inflight_max:
                return 0.0
        return _IDLE_WAIT_S

    def _backlog_waiting(self) -> bool:
        end = self._backlog_end
        return end is None or bool(self._backlog_buf) or self._backlog_cursor < end

    def _build_pending(self) -> list[NewMessage]:
        built: list[NewMessage] = []
        while self._pending:
            kind, build = self._pending.popleft()
            try:
                message = build()
                out = prepare(message)
            except (ValidationError, ProtocolError, ValueError) as e:
                self.invalid += 1
                logger.error("telemetry %s message could not be built: %s", kind, e)
                continue
            built.append(NewMessage(kind=message.KIND.value, topic=out.topic,
                                    payload=out.payload, qos=out.qos, retain=out.retain,
                                    msg_id=message.msg_id, created_at=self._clock()))
        return built

    def _write(self, acked: list[int], sent: list[int]) -> bool:
        try:
            result = self._outbox.write(self._carry, acked_ids=acked, sent_ids=sent,
                                        now=self._clock())
        except OutboxUnavailable as e:
            self.write_errors += 1
            self.last_error = str(e)
            self._retry_s = min(_RETRY_MAX_S, max(0.05, self._retry_s * 2))
            self._retry_at = time.monotonic() + self._retry_s
            logger.error("%s; retrying in %.2f s (%d messages waiting in memory)", e,
                         self._retry_s, len(self._carry) + len(self._pending))
            return False
        self._retry_s = 0.0
        self._next_write_at = time.monotonic() + self._cfg.flush_interval_ms / 1000.0
        self._carry = []
        self._admitted(result)
        return True

    def _admitted(self, result: WriteResult) -> None:
        self.duplicates += result.duplicates
        if result.dropped:
            self._count_dropped(result.dropped)
        if result.evicted_ids:
            gone = set(result.evicted_ids)
            self._live = deque(r for r in self._live if r.id not in gone)
            self._backlog_buf = deque(r for r in self._backlog_buf if r.id not in gone)
        if self._up and self._backlog_end is not None:
            self._live.extend(result.admitted)
            if len(self._live) > self._live_max:  # the broker is slow: the backlog takes over
                self._backlog_end = max(self._backlog_end, self._live[-1].id)
                self._live.clear()

    def _handle_notes(self, acked: list[int]) -> None:
        with self._lock:
            notes, self._notes = self._notes, []
        for kind, mid, ok, reason in notes:
            if kind == "up":
                self._up = True
                self._backlog_end = None
                self._backlog_cursor = 0
                self._backlog_buf.clear()
                self._live.clear()
                self._tokens = 0.0
                self._tokens_at = time.monotonic()
                if self._offline_alarmed:
                    self._offline_alarmed = False
                    self._event("telemetry_online", "info",
                                f"MQTT broker reachable again; {self._outbox.depth} messages "
                                "in the outbox are being sent", outbox_depth=self._outbox.depth)
            elif kind == "down":
                self._up = False
                self._live.clear()
                self._backlog_buf.clear()
                self._backlog_end = None
            else:
                entry = self._inflight.pop(mid, None)
                if entry is None:
                    continue  # the status, or a message of a replaced client
                self._inflight_rows.discard(entry.row_id)
                if entry.backlog:
                    self._backlog_inflight -= 1
                if ok:
                    acked.append(entry.row_id)
                    self.acknowledged += 1
                else:
                    self.rejected += 1
                    self.last_error = f"broker refused outbox row {entry.row_id}: {reason}"
                    logger.error("broker refused outbox row %d (%s); kept for the next "
                                 "connection", entry.row_id, reason)

    def _forget_inflight(self) -> None:
        # A new client: the old one's session (and its unacknowledged messages) is gone.
        self._inflight.clear()
        self._inflight_rows.clear()
        self._backlog_inflight = 0
        self._up = False
        self._live.clear()
        self._backlog_buf.clear()
        self._backlog_end = None

    def _watch_offline(self) -> None:
        down_s = self.connection.down_for_s()
        if not self._up and not self._offline_alarmed and down_s > self._cfg.offline_alarm_s:
            self._offline_alarmed = True
            self._event("telemetry_offline", "warning",
                        f"MQTT broker {self._cfg.host}:{self._cfg.port} unreachable for "
                        f"{down_s:.0f} s; messages wait in the outbox",
                        outbox_depth=self._outbox.depth, last_error=self.connection.last_error)

    def _event(self, kind: str, severity: Severity, message: str, **data: EventValue) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(kind, severity, message, data)
        except Exception:  # an event sink must not stop the outbox
            logger.exception("could not record telemetry event %s", kind)

    # ------------------------------------------------------------------ sending
    def _fill_window(self, now: float) -> list[int]:
        sent: list[int] = []
        cap = self._cfg.inflight_max
        while self._live and len(self._inflight) < cap:
            row = self._live.popleft()
            if not self._send(row, backlog=False):
                self._live.appendleft(row)
                return sent
            sent.append(row.id)
        if self._backlog_end is None:
            try:
                self._backlog_end = self._outbox.max_id()
            except OutboxUnavailable as e:
                logger.warning("%s", e)
                return sent
            self._backlog_cursor = 0
        rate = self._cfg.backlog_rate_per_s
        self._tokens = min(float(self._cfg.backlog_inflight_max),
                           self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        while (len(self._inflight) < cap and self._tokens >= 1.0
               and self._backlog_inflight < self._cfg.backlog_inflight_max):
            if not self._backlog_buf:
                if self._backlog_cursor >= self._backlog_end:
                    break
                try:
                    rows = self._outbox.backlog(self._backlog_cursor, self._backlog_end,
                                                _BACKLOG_CHUNK)
                except OutboxUnavailable as e:
                    logger.warning("%s", e)
                    break
                if not rows:
                    self._backlog_cursor = self._backlog_end
                    break
                self._backlog_cursor = rows[-1].id
                self._backlog_buf.extend(r for r in rows if r.id not in self._inflight_rows)
                continue
            row = self._backlog_buf.popleft()
            if row.id in self._inflight_rows:
                continue
            if not self._send(row, backlog=True):
                self._backlog_buf.appendleft(row)
                break
            self._tokens -= 1.0
            sent.append(row.id)
        return sent

    def _send(self, row: OutboxRow, *, backlog: bool) -> bool:
        retain = row.retain
        if retain:
            if row.id < self._retained_high.get(row.topic, 0):
                retain = False  # a newer one is already the broker's retained copy
            else:
                self._retained_high[row.topic] = row.id
        mid = self.connection.publish(row.topic, row.payload, row.qos, retain)
        if mid is None:
            return False
        stale = self._inflight.pop(mid, None)
        if stale is not None:  # mid wrapped around a message paho still holds
            self._inflight_rows.discard(stale.row_id)
            self._backlog_inflight -= int(stale.backlog)
        self._inflight[mid] = _InFlight(row.id, backlog)
        self._inflight_rows.add(row.id)
        self._backlog_inflight += int(backlog)
        self.published += 1
        return True
