"""The publisher: from any thread into the outbox, and from the outbox to the broker.

Threads:
- producers (the pipeline's verdict sink, the metrics ticker, the updater) call
  `submit(kind, build)`: an append to a bounded in-memory deque, never a wait. When the
  deque is full the message is refused and counted as dropped (by kind).
- the worker ("telemetry-outbox") builds the messages and hands them to the outbox as
  one write at a time (together with the deletes of acknowledged rows and the attempt
  counts of sent ones); the store's writer thread commits it and wakes the worker, which
  then feeds the connection through a `SendWindow` (sender.py): live messages first,
  then the backlog oldest first at a bounded rate, within a bounded number of
  unacknowledged messages. The worker never waits for SQLite's write lock.
- paho's network thread reports connects, disconnects and PUBACKs; it only leaves a note
  for the worker (it never touches SQLite).

Invariants:
- Nothing is published that is not committed in the outbox; a row is deleted only after
  its PUBACK, and not after the PUBACK of paho's own re-send on a reconnect (it may reach
  only other subscribers: the row goes out again after `reconnect_settle_s`, sender.py).
  A process restart or a replaced client sends unacknowledged rows again: duplicates are
  possible, losses are not (consumers de-duplicate on `msg_id`).
- A negative PUBACK (MQTT 5 reason >= 0x80) keeps the row: it is counted, logged, and
  sent again after the next reconnect.
- A PUBACK "no matching subscribers" (MQTT 5 reason 0x10) keeps the row too: the broker
  took it, but nobody will ever receive it (after a broker restart Mosquitto has not
  restored the collector's shared subscription until the collector reconnects). Sending
  pauses `unrouted_retry_s`, then the outbox is sent again oldest first at the backlog
  rate, so while nobody subscribes at most `backlog_inflight_max` messages probe the
  broker per pause. After a reconnect, sending waits `reconnect_settle_s` for the same
  reason (other subscribers, e.g. a monitor, would hide the 0x10 from us).
- Every loss is reported: `outbox.dropped` of a `metrics` message (`submit_metrics`)
  counts the messages lost since the last `metrics` message that made it into the outbox,
  so a loss report that is itself refused is carried into the next one.
- On an orderly stop everything handed over is written to the outbox first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from appliance.records import EventValue, Severity
from appliance.telemetry.config import TelemetryConfig
from appliance.telemetry.connection import AckOutcome, BrokerConnection
from appliance.telemetry.errors import OutboxUnavailable
from appliance.telemetry.outbox import NewMessage, Outbox, WriteResult
from appliance.telemetry.sender import SendWindow
from protocol import Message, MetricsMessage, OutboxStats, Outgoing, ProtocolError, prepare
from protocol.backoff import Backoff, BackoffConfig
from protocol.mqtt_client import ClientFactory, Inbound, paho_client

logger = logging.getLogger(__name__)

Build = Callable[[], Message]
"""Builds one message; runs on the worker thread (keeps the producer's cost tiny)."""
EventSink = Callable[[str, Severity, str, dict[str, EventValue]], None]
"""(kind, severity, message, data): an appliance event (recorded in the store)."""

_IDLE_WAIT_S = 0.25
_RETRY = BackoffConfig(initial_s=0.05, max_s=5.0)
"""An outbox write the store rolled back is tried again this often."""
_STOP_WRITE_WAIT_S = 5.0


@dataclass(frozen=True)
class PublisherStats:
    """Counters since start, for the panel and tests."""

    connected: bool
    protocol: str
    """MQTT version of the client: "5" or "3.1.1"."""
    connection_error: str | None
    """Why the last connection attempt failed or ended (refused, unreachable, ...)."""
    outbox_depth: int
    pending: int
    inflight: int
    live_waiting: int
    published: int
    acknowledged: int
    rejected: int
    unrouted: int
    """PUBACKs "no matching subscribers": kept in the outbox and sent again later."""
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
        client_factory: ClientFactory = paho_client,
        subscriptions: Sequence[str] = (),
        on_message: Callable[[Inbound], None] | None = None,
    ) -> None:
        self._cfg = cfg
        self._outbox = outbox
        self._clock = clock
        self._on_event = on_event
        self.connection = BrokerConnection(
            cfg, client_id=client_id, will=will, first_message=first_message,
            on_up=self._note_up, on_down=self._note_down, on_ack=self._note_ack,
            client_factory=client_factory, subscriptions=subscriptions, on_message=on_message,
        )
        self._pending: deque[tuple[str, Build]] = deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._closed = False
        self._lock = threading.Lock()  # notes from paho, loss counters
        self._notes: list[tuple[str, int, AckOutcome, str]] = []
        self._dropped_window: Counter[str] = Counter()
        self._dropped_total: Counter[str] = Counter()
        self._unreported = 0  # losses not yet carried by an admitted metrics message
        # worker-only state
        self._window = SendWindow(cfg, outbox, self.connection.publish)
        self._reports: dict[str, int] = {}  # metrics msg_id -> losses it reports
        self._carry: list[NewMessage] = []  # built, not yet handed to the outbox
        # what the outstanding outbox write holds, restored if it is rolled back
        self._in_write: tuple[list[NewMessage], list[int], list[int]] = ([], [], [])
        self._acked: list[int] = []  # rows whose PUBACK came, not yet deleted
        self._sent: list[int] = []  # rows handed to the client, attempt not yet counted
        self._retry_at = 0.0
        self._retry = Backoff(_RETRY)
        self._next_write_at = 0.0
        self._offline_alarmed = False
        self._unrouted_warned = False  # until the next positive PUBACK
        self._thread: threading.Thread | None = None
        self.acknowledged = 0
        self.rejected = 0
        self.unrouted = 0
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

    def submit_metrics(self, message: MetricsMessage) -> bool:
        """Hand a `metrics` message over; its `outbox` field (depth, and the losses not
        yet reported) is filled in when it is written. False if refused."""
        return self.submit("metrics", lambda: self._with_outbox_stats(message))

    def _with_outbox_stats(self, message: MetricsMessage) -> MetricsMessage:
        # On the worker: the depth is current and the report is tied to this msg_id.
        with self._lock:  # what no other message of this batch reports already
            dropped = max(0, self._unreported - sum(self._reports.values()))
        self._reports[message.msg_id] = dropped
        stats = OutboxStats(depth=self._outbox.depth, dropped=dropped)
        return message.model_copy(update={"outbox": stats})

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
            protocol=self.connection.protocol,
            connection_error=self.connection.last_error,
            outbox_depth=self._outbox.depth,
            pending=len(self._pending),
            inflight=len(self._window.inflight),
            live_waiting=len(self._window.live),
            published=self._window.published,
            acknowledged=self.acknowledged,
            rejected=self.rejected,
            unrouted=self.unrouted,
            duplicates=self.duplicates,
            invalid=self.invalid,
            dropped=dropped,
            write_errors=self.write_errors,
            last_error=self.last_error,
        )

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def alive(self) -> bool:
        """Whether the worker thread runs (the outbox must not be closed under it)."""
        return self._thread is not None and self._thread.is_alive()

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
        return not self._pending and not self._carry and not self._outbox.writing

    # ------------------------------------------------------------------ paho notes
    def _note(self, kind: str, mid: int = 0, outcome: AckOutcome = "ok",
              reason: str = "") -> None:
        with self._lock:
            self._notes.append((kind, mid, outcome, reason))
        # A PUBACK wakes the worker only when messages wait for room in the window;
        # otherwise it is handled on the next turn (within the idle wait), together with
        # the others in one write.
        if kind != "ack" or self._window.waiting_for_room:
            self._wake.set()

    def _note_up(self) -> None:
        self._note("up")

    def _note_down(self, reason: str) -> None:
        self._note("down", reason=reason)

    def _note_ack(self, mid: int, outcome: AckOutcome, reason: str) -> None:
        self._note("ack", mid, outcome, reason)

    def _count_dropped(self, dropped: dict[str, int]) -> None:
        with self._lock:
            self._dropped_window.update(dropped)
            self._dropped_total.update(dropped)
            self._unreported += sum(dropped.values())

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        grace_until: float | None = None
        hard_until = 0.0
        window = self._window
        while True:
            hold_s = self._hold_s()
            if hold_s > 0.0:  # batch writes: producers do not wake us during this
                self._stopping.wait(hold_s)
            else:
                self._wake.wait(0.01 if self._stopping.is_set() else self._wait_s())
            self._wake.clear()
            now = time.monotonic()
            if self._stopping.is_set() and grace_until is None:
                grace_until = now + self._cfg.stop_grace_s
                hard_until = now + max(self._cfg.stop_grace_s, 10.0)
            if grace_until is None and self.connection.supervise():
                window.forget()
            self._handle_notes()
            self._watch_offline()
            self._carry.extend(self._build_pending())
            if self._outbox.writing and self._outbox.write_done():
                self._finish_write(0.0)
            due = now >= self._retry_at and (now >= self._next_write_at or bool(grace_until))
            if (self._carry or self._acked or self._sent) and due and not self._outbox.writing:
                self._begin_write()
            if window.up:
                self._sent.extend(window.fill(now))
            if grace_until is not None:
                unwritten = bool(self._pending or self._carry or self._outbox.writing)
                settled = not window.up or (not window.live and not window.inflight)
                if (not unwritten and (settled or now >= grace_until)) or now >= hard_until:
                    break
        if self._outbox.writing:
            self._finish_write(_STOP_WRITE_WAIT_S)
        if (self._acked or self._sent or self._carry) and not self._outbox.writing:
            self._begin_write()
            if self._outbox.writing:
                self._finish_write(_STOP_WRITE_WAIT_S)
        if self._carry or self._pending or self._outbox.writing:
            logger.error("telemetry stopped with %d messages not written to the outbox",
                         len(self._carry) + len(self._pending) + len(self._in_write[0]))

    def _hold_s(self) -> float:
        if self._stopping.is_set() or self._outbox.writing or not (self._pending or self._carry):
            return 0.0
        return max(self._retry_at, self._next_write_at) - time.monotonic()

    def _wait_s(self) -> float:
        if self._outbox.writing:  # the store's writer wakes us when it has committed
            return 0.0 if self._outbox.write_done() else self._window.wait_s(_IDLE_WAIT_S)
        if self._pending or self._carry:
            return 0.0
        return self._window.wait_s(_IDLE_WAIT_S)

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

    def _begin_write(self) -> None:
        """Hand the built messages and the acknowledged and sent rows to the outbox (the
        store's writer commits them; its `on_done` wakes the worker)."""
        self._in_write = (self._carry, self._acked, self._sent)
        self._carry, self._acked, self._sent = [], [], []
        carry, acked, sent = self._in_write
        self._next_write_at = time.monotonic() + self._cfg.flush_interval_ms / 1000.0
        try:
            self._outbox.begin_write(carry, acked_ids=acked, sent_ids=sent, now=self._clock(),
                                     on_done=self._wake.set)
        except OutboxUnavailable as e:
            self._write_failed(e)

    def _finish_write(self, timeout_s: float) -> None:
        """Apply the outstanding write's outcome; if it was rolled back, what it held is
        written again after a backoff."""
        try:
            result = self._outbox.finish_write(timeout_s)
        except OutboxUnavailable as e:
            if self._outbox.writing:  # not known in time (stopping): it may still commit
                logger.error("%s", e)
                return
            self._write_failed(e)
            return
        written = self._in_write[0]
        self._in_write = ([], [], [])
        self._retry.reset()
        self._admitted(result, written)

    def _write_failed(self, error: OutboxUnavailable) -> None:
        carry, acked, sent = self._in_write
        self._in_write = ([], [], [])
        self._carry = carry + self._carry
        self._acked = acked + self._acked
        self._sent = sent + self._sent
        self.write_errors += 1
        self.last_error = str(error)
        delay_s = self._retry.next_delay_s()
        self._retry_at = time.monotonic() + delay_s
        logger.error("%s; retrying in %.2f s (%d messages waiting in memory)", error,
                     delay_s, len(self._carry) + len(self._pending))

    def _admitted(self, result: WriteResult, written: list[NewMessage]) -> None:
        self.duplicates += result.duplicates
        admitted = {r.msg_id for r in result.admitted}
        reported = 0
        for m in written:  # a refused metrics message reported nothing
            n = self._reports.pop(m.msg_id, 0)
            reported += n if m.msg_id in admitted else 0
        if result.dropped or reported:
            self._count_dropped(result.dropped)
            with self._lock:
                self._unreported -= reported
        self._window.admitted(result.admitted, result.evicted_ids)

    def _handle_notes(self) -> None:
        with self._lock:
            notes, self._notes = self._notes, []
        window = self._window
        for kind, mid, outcome, reason in notes:
            if kind == "up":
                window.connected()
                if self._offline_alarmed:
                    self._offline_alarmed = False
                    self._event("telemetry_online", "info",
                                f"MQTT broker reachable again; {self._outbox.depth} messages "
                                "in the outbox are being sent", outbox_depth=self._outbox.depth)
            elif kind == "down":
                window.disconnected()
            elif (entry := window.acknowledged(mid)) is None:
                continue  # the status, or a message of a replaced client
            elif outcome == "ok" and entry.cut:
                pass  # kept: sent again after the settle (SendWindow.disconnected)
            elif outcome == "ok":
                self._acked.append(entry.row_id)
                self.acknowledged += 1
                self._unrouted_warned = False
            elif outcome == "unrouted":
                self.unrouted += 1
                window.unrouted(time.monotonic())
                if not self._unrouted_warned:
                    self._unrouted_warned = True
                    logger.warning(
                        "the broker has no subscriber for %s (restarted, the collector not "
                        "yet back?): messages stay in the outbox and are sent again every "
                        "%.1f s until someone subscribes", entry.topic,
                        self._cfg.unrouted_retry_s)
            else:
                self.rejected += 1
                self.last_error = f"broker refused outbox row {entry.row_id}: {reason}"
                logger.error("broker refused outbox row %d (%s); kept for the next "
                             "connection", entry.row_id, reason)

    def _watch_offline(self) -> None:
        down_s = self.connection.down_for_s()
        if not self._window.up and not self._offline_alarmed and \
                down_s > self._cfg.offline_alarm_s:
            self._offline_alarmed = True
            self._event("telemetry_offline", "warning",
                        f"MQTT broker {self._cfg.broker.host}:{self._cfg.broker.port} "
                        f"unreachable for {down_s:.0f} s; messages wait in the outbox",
                        outbox_depth=self._outbox.depth, last_error=self.connection.last_error)

    def _event(self, kind: str, severity: Severity, message: str, **data: EventValue) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(kind, severity, message, data)
        except Exception:  # an event sink must not stop the outbox
            logger.exception("could not record telemetry event %s", kind)
