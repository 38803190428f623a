"""The telemetry outbox on a real SQLite file: order, acknowledgement, de-duplication,
the bound (oldest metrics first, events kept), restart, and writing only through the
store's writer (one writer per file)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.store import Store
from appliance.telemetry.errors import OutboxUnavailable, TelemetryError
from appliance.telemetry.outbox import NewMessage, Outbox, plan_admission
from appliance.telemetry.sender import SendWindow
from protocol import new_msg_id
from tests.appliance.store_rig import open_store
from tests.appliance.telemetry_helpers import record, telemetry_cfg

M, E, MODEL = "metrics", "events/defect", "model"


def msg(kind: str, n: int = 0) -> NewMessage:
    return NewMessage(kind=kind, topic=f"lineguard/s/l/{kind}", payload=b'{"n": %d}' % n,
                      qos=1, retain=kind == MODEL, msg_id=new_msg_id(), created_at=1000.0 + n)


@pytest.mark.parametrize(
    ("depth", "metrics", "kinds", "admit", "evict", "dropped"),
    [
        # room: everything goes in
        (0, 0, [M, E, MODEL], (True, True, True), 0, {}),
        # full of metrics: each new message pushes out the oldest metrics row
        (5, 5, [E, M], (True, True), 2, {M: 2}),
        # full, only events left: a new metrics message is refused, events still go in
        (5, 0, [M, E], (False, True), 0, {M: 1}),
        # metrics admitted in this batch are evictable by later ones in it
        (4, 0, [M, E, E], (True, True, True), 1, {M: 1}),
        # at the hard bound even events are refused
        (7, 0, [E, MODEL, M], (False, False, False), 0, {E: 1, MODEL: 1, M: 1}),
        # between the bounds: events in, metrics out
        (6, 0, [E, M, E], (True, False, False), 0, {M: 1, E: 1}),
    ],
)
def test_plan_admission(
    depth: int, metrics: int, kinds: list[str], admit: tuple[bool, ...], evict: int,
    dropped: dict[str, int],
) -> None:
    plan = plan_admission(depth, metrics, kinds, max_rows=5, hard_max_rows=7)
    assert (plan.admit, plan.evict_metrics, dict(plan.dropped)) == (admit, evict, dropped)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path, flush_interval_ms=5)
    yield s
    s.stop()


class _Unmigrated:
    """A database without the outbox table (the store was never opened on it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def transact(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("never written")


def test_needs_the_migrated_table(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "empty.db").close()
    with pytest.raises(TelemetryError, match="open the store first"):
        Outbox(_Unmigrated(tmp_path / "empty.db"), max_rows=10,  # type: ignore[arg-type]
               hard_max_rows=10)


def test_rows_come_back_in_order_until_acknowledged(store: Store) -> None:
    outbox = Outbox(store, max_rows=100, hard_max_rows=100)
    first = outbox.write([msg(E, i) for i in range(5)])
    ids = [r.id for r in first.admitted]
    assert ids == sorted(ids) and outbox.depth == 5
    assert [r.id for r in outbox.backlog(0, outbox.max_id(), 3)] == ids[:3]
    assert [r.id for r in outbox.backlog(ids[2], outbox.max_id(), 10)] == ids[3:]
    second = outbox.write([], acked_ids=[ids[0], ids[3], 999_999], sent_ids=[ids[1], ids[1]],
                          now=5.0)
    assert second.deleted == 2 and outbox.depth == 3
    rows = outbox.backlog(0, outbox.max_id(), 10)
    assert [r.id for r in rows] == [ids[1], ids[2], ids[4]]
    assert [r.attempts for r in rows] == [2, 0, 0]
    assert rows[0].payload == b'{"n": 1}' and rows[0].kind == E and rows[0].qos == 1
    outbox.close()
    # a restart sees the same rows and depth
    again = Outbox(store, max_rows=100, hard_max_rows=100)
    assert again.depth == 3 and again.depth_by_kind == {E: 3}
    # ids are never reused, even after everything was acknowledged
    again.write([], acked_ids=[ids[1], ids[2], ids[4]])
    assert again.depth == 0
    assert again.write([msg(E)]).admitted[0].id > ids[4]
    again.close()


def test_same_msg_id_is_stored_once(store: Store) -> None:
    outbox = Outbox(store, max_rows=100, hard_max_rows=100)
    m = msg(E)
    result = outbox.write([m, m])
    assert (len(result.admitted), result.duplicates) == (1, 1)
    assert outbox.write([m]).duplicates == 1
    assert outbox.depth == 1
    outbox.close()


def test_bound_evicts_oldest_metrics_and_keeps_events(store: Store) -> None:
    outbox = Outbox(store, max_rows=5, hard_max_rows=7)
    metrics = outbox.write([msg(M, i) for i in range(3)]).admitted
    outbox.write([msg(E, 10), msg(MODEL, 11)])
    assert outbox.depth_by_kind == {M: 3, E: 1, MODEL: 1}
    # full: two events push out the two oldest metrics
    result = outbox.write([msg(E, 12), msg(E, 13)])
    assert result.dropped == {M: 2}
    assert result.evicted_ids == [metrics[0].id, metrics[1].id]
    assert outbox.depth_by_kind == {M: 1, E: 3, MODEL: 1}
    # a new metrics message replaces the last old one; the new one is admitted
    result = outbox.write([msg(M, 14)])
    assert result.dropped == {M: 1} and len(result.admitted) == 1
    # the only metrics row left is evicted by an event; then metrics are refused
    result = outbox.write([msg(E, 15), msg(M, 16)])
    assert result.dropped == {M: 2} and [r.kind for r in result.admitted] == [E]
    assert outbox.depth_by_kind == {E: 4, MODEL: 1}
    # events beyond max_rows up to the hard bound, then refused (counted)
    result = outbox.write([msg(E, 17), msg(MODEL, 18), msg(E, 19)])
    assert [r.kind for r in result.admitted] == [E, MODEL] and result.dropped == {E: 1}
    assert outbox.depth == 7
    kinds = [r.kind for r in outbox.backlog(0, outbox.max_id(), 100)]
    assert kinds.count(M) == 0 and kinds.count(E) == 5 and kinds.count(MODEL) == 2
    outbox.close()


def test_batch_evicting_its_own_metrics_does_not_return_them(store: Store) -> None:
    outbox = Outbox(store, max_rows=2, hard_max_rows=4)
    result = outbox.write([msg(M, 1), msg(M, 2), msg(M, 3)])
    assert result.dropped == {M: 1}
    assert [r.payload for r in result.admitted] == [b'{"n": 2}', b'{"n": 3}']
    outbox.close()


def test_writes_go_through_the_store_writer_beside_verdicts(store: Store) -> None:
    """The outbox never writes on a connection of its own: its writes commit in the
    store writer's batches, interleaved with verdicts, and neither loses a row."""
    outbox = Outbox(store, max_rows=100_000, hard_max_rows=100_000)
    errors: list[BaseException] = []

    def telemetry_writes() -> None:
        try:
            for batch in range(100):
                rows = outbox.write([msg(E, batch * 20 + i) for i in range(20)]).admitted
                outbox.write([], acked_ids=[r.id for r in rows[:10]])
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=telemetry_writes)
    thread.start()
    now = time.time()
    for i in range(2000):
        store.submit(record(i, "pass", now=now))
    thread.join(60)
    store.flush(30)
    stats = store.stats()
    assert not errors
    assert outbox.depth == 1000 and len(outbox.backlog(0, outbox.max_id(), 2000)) == 1000
    assert stats.committed == stats.submitted and stats.write_retries == 0
    assert store.inspection_count() == 2000
    outbox.close()


def test_begin_write_never_blocks_and_wakes_its_caller(store: Store) -> None:
    outbox = Outbox(store, max_rows=100, hard_max_rows=100, urgent=False)
    woken = threading.Event()
    outbox.begin_write([msg(E, 1)], on_done=woken.set)
    assert outbox.writing
    with pytest.raises(TelemetryError, match="outstanding"):
        outbox.begin_write([msg(E, 2)])
    assert woken.wait(10) and outbox.write_done()
    result = outbox.finish_write()
    assert len(result.admitted) == 1 and outbox.depth == 1 and not outbox.writing


def test_a_write_refused_by_sqlite_rolls_back_alone(store: Store) -> None:
    """A write the database refuses fails only itself: nothing of it is kept, the depth
    is unchanged, and the verdicts of the same batch commit."""
    outbox = Outbox(store, max_rows=100, hard_max_rows=100)
    bad = NewMessage(kind=E, topic="t", payload=b"{}", qos=3, retain=False,  # CHECK qos
                     msg_id=new_msg_id(), created_at=1.0)
    store.submit(record(1, "pass"))
    with pytest.raises(OutboxUnavailable, match="rolled back"):
        outbox.write([msg(E, 1), bad])
    assert outbox.depth == 0 and outbox.backlog(0, 10**9, 10) == [] and not outbox.writing
    store.flush()
    assert store.inspection_count() == 1
    assert len(outbox.write([msg(E, 2)]).admitted) == 1


def test_a_stopped_store_refuses_outbox_writes(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    outbox = Outbox(store, max_rows=100, hard_max_rows=100)
    store.stop()
    with pytest.raises(OutboxUnavailable, match="refused"):
        outbox.begin_write([msg(E)])
    assert not outbox.writing
    outbox.close()


def test_a_puback_for_a_row_paho_resent_on_reconnect_is_no_proof_of_delivery(
    store: Store,
) -> None:
    """paho re-sends what was in flight the moment it reconnects, before the settle that
    lets collectors subscribe again: those rows come back marked `cut` (the publisher
    keeps them) and go out again with the backlog; rows sent after it do not."""
    outbox = Outbox(store, max_rows=100, hard_max_rows=100)
    rows = outbox.write([msg(E, i) for i in range(3)]).admitted
    mids = iter(range(1, 100))
    window = SendWindow(telemetry_cfg(1883, reconnect_settle_s=0.0), outbox,
                        lambda *_: next(mids))
    window.connected()
    # (a second later: the backlog's rate bucket has filled)
    assert window.fill(time.monotonic() + 1.0) == [r.id for r in rows]
    first = window.acknowledged(1)
    assert first is not None and not first.cut
    window.disconnected()
    window.connected()  # paho re-sends mids 2 and 3 by itself
    resent = window.acknowledged(2)
    assert resent is not None and resent.cut and resent.row_id == rows[1].id
    # the backlog (everything in the outbox) skips only what is still in flight
    assert window.fill(time.monotonic() + 1.0) == [rows[0].id, rows[1].id]
    later = window.acknowledged(4)
    assert later is not None and not later.cut
    outbox.close()
