"""The fleet store on a real SQLite file and a real PostgreSQL database (`database_url`):
ingest, de-duplication, line state, queries, quarantine, counters and migrations."""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
from datetime import timedelta

import pytest
from sqlalchemy import text

from cloud.collector.validate import Delivery, classify
from cloud.config import FleetStoreConfig
from cloud.db import DatabaseConfig
from cloud.db import migrate as db_migrate
from cloud.db.migrate import head_revisions
from cloud.errors import FleetStoreError, StoreRejected
from cloud.fleet import FleetStore, Received, Rejected, to_ms
from protocol import DefectEventV1, Message, SizedDetection, decode, encode
from protocol.fields import new_msg_id
from tests.cloud import fleet_helpers as h

NOW_MS = to_ms(h.T0 + timedelta(hours=1))


@pytest.fixture
def store(database_url):
    s = FleetStore(DatabaseConfig(url=database_url), clock=lambda: NOW_MS / 1000)
    yield s
    s.close()


def open_store(url: str, **store: object) -> FleetStore:
    return FleetStore(DatabaseConfig(url=url), FleetStoreConfig.model_validate(store))


def rec(message: Message, received_at_ms: int = NOW_MS) -> Received:
    return Received(message, encode(message), received_at_ms)


def test_every_kind_is_stored_once_and_redelivery_is_a_duplicate(store):
    messages = [h.status(), h.metrics(), h.defect(), h.drift(), h.model_report()]
    first = store.ingest([rec(m) for m in messages], collector_id="c1")
    assert (first.stored, first.duplicates) == (5, 0)
    # The same ids again (QoS 1 redelivery), plus one duplicate inside the batch.
    again = store.ingest([rec(m) for m in [*messages, messages[1]]], collector_id="c1")
    assert (again.stored, again.duplicates) == (0, 6)
    db = store.url
    assert h.query(db, "SELECT COUNT(*) FROM messages") == [(5,)]
    for table in ("status_events", "metrics", "defect_events", "drift_sketches", "model_reports"):
        assert h.query(db, f"SELECT COUNT(*) FROM {table}") == [(1,)], table
    assert h.query(db, "SELECT COUNT(*) FROM defects") == [(1,)]
    (c,) = store.counters()
    assert c.collector_id == "c1"
    assert c.counters == {"received": 11, "stored": 5, "duplicates": 6}


def test_same_msg_id_with_other_content_is_quarantined_not_dropped(store):
    """Issue 9, defect 8: the first of two messages with one msg_id and different
    content was kept and the second one counted as a mere duplicate, silently."""
    first = h.metrics()
    store.ingest([rec(first)], collector_id="c1")
    other = first.model_copy(update={"fps": first.fps + 1.0})
    # A redelivery of the first, spelled differently (indented JSON), is a duplicate;
    # the other content, once alone and once twice in one batch, is a conflict each time.
    respelled = Received(first, json.dumps(json.loads(encode(first)), indent=2).encode(),
                         NOW_MS)
    result = store.ingest([respelled, rec(other)], collector_id="c1")
    assert (result.stored, result.duplicates, result.quarantined, result.conflicting) == (
        0, 1, 1, 1)
    again = store.ingest([rec(other), rec(other)], collector_id="c1")
    assert (again.duplicates, again.quarantined, again.conflicting) == (0, 2, 2)
    # Within one batch: the first copy is stored, a different second one quarantined.
    fresh = h.metrics()
    changed = fresh.model_copy(update={"window_s": fresh.window_s * 2})
    inner = store.ingest([rec(fresh), rec(changed)], collector_id="c1")
    assert (inner.stored, inner.conflicting) == (1, 1)
    stored = h.query(store.url, "SELECT payload_json FROM metrics WHERE msg_id = ?",
                     (first.msg_id,))
    assert json.loads(stored[0][0])["fps"] == first.fps  # the first one stays
    summary = store.quarantine()
    assert summary.by_reason["conflicting_duplicate"] == 4
    (item,) = [q for q in summary.recent if first.msg_id in q.detail]
    assert (item.reason, item.times_seen) == ("conflicting_duplicate", 3)
    assert base64.b64decode(item.payload_head_b64) == encode(other)
    (c,) = store.counters()
    assert c.counters["quarantined.conflicting_duplicate"] == 4
    assert c.counters["duplicates"] == 1
    assert c.counters["stored"] == 2


def _fleet_branch_only(path) -> None:
    """A file with the fleet branch's schema alone, as a 0.1 fleet store had."""
    from alembic import command
    from sqlalchemy import create_engine

    engine = create_engine(h.sqlite_url(path))
    try:
        with engine.begin() as conn:
            cfg = db_migrate._alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "fleet_0001")  # what 0.1's schema was
    finally:
        engine.dispose()


def test_a_0_1_sqlite_fleet_store_is_adopted_and_its_rows_are_plain_duplicates(tmp_path):
    """A fleet.db made by 0.1 (its own schema_migrations, version 1: no content digest)
    is backed up and adopted as it is; a redelivery of one of its messages is a
    duplicate, never a conflict."""
    path = tmp_path / "fleet.db"
    _fleet_branch_only(path)  # 0.1 had the fleet tables only (no other component's)
    old = h.metrics()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript("""
        DROP TABLE alembic_version;
        ALTER TABLE messages DROP COLUMN content_sha256;
        CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,
                                        applied_at_ms BIGINT NOT NULL);
        INSERT INTO schema_migrations VALUES (1, 0);""")
    conn.execute("INSERT INTO messages VALUES (?, 'metrics', 's', 'plant1', 'line-1', 0, 0, 0)",
                 (old.msg_id,))
    conn.close()
    store = open_store(h.sqlite_url(path))
    try:
        # fleet_0001 adopted the file; the other components' branches were created
        assert store.migrations_applied == sorted(head_revisions())
        result = store.ingest([rec(old)], collector_id="c1")
        assert (result.stored, result.duplicates, result.conflicting) == (0, 1, 0)
        assert h.query(path, "SELECT name FROM sqlite_master WHERE name = 'schema_migrations'"
                       ) == []
    finally:
        store.close()
    (backup,) = tmp_path.glob("fleet.db.bak-*")
    assert sqlite3.connect(backup).execute("SELECT COUNT(*) FROM messages").fetchone() == (1,)


def test_commands_are_logged_but_do_not_make_a_line(store):
    cmd = h.command(line="line-9")
    assert store.ingest([rec(cmd)], collector_id="c1").stored == 1
    assert h.query(store.url, "SELECT kind FROM messages") == [("cmd/update",)]
    assert store.line("plant1", "line-9") is None


def test_line_state_follows_event_time_not_arrival(store):
    t = h.T0
    online = h.status(sent_at=t + timedelta(seconds=10))
    old_shutdown = h.status(sent_at=t, online=False)
    store.ingest([rec(online)], collector_id="c1")
    # An older status arriving late (from an outbox) does not overwrite the newer one.
    store.ingest([rec(old_shutdown)], collector_id="c1")
    line = store.line("plant1", "line-1")
    assert line is not None
    assert line.online is True
    assert line.state == "online"
    assert line.model is not None
    assert line.model.version == 7
    # A last will is dated by its arrival: its sent_at (registration) is older.
    will = h.status(sent_at=t, will=True)
    store.ingest([rec(will, received_at_ms=to_ms(t + timedelta(seconds=20)))], collector_id="c1")
    line = store.line("plant1", "line-1")
    assert line is not None
    assert (line.online, line.state, line.reason) == (False, "offline", "connection_lost")
    assert line.model is not None  # the will carries no model: the model stays known
    back = h.status(sent_at=t + timedelta(seconds=30))
    store.ingest([rec(back)], collector_id="c1")
    line = store.line("plant1", "line-1")
    assert line is not None
    assert line.online is True


def test_model_reports_and_line_model(store):
    t = h.T0
    store.ingest([rec(h.status(sent_at=t, model_version=7))], collector_id="c1")
    store.ingest([rec(h.model_report(sent_at=t + timedelta(seconds=5), version=8))],
                 collector_id="c1")
    store.ingest([rec(h.model_report(sent_at=t + timedelta(seconds=1), version=6))],
                 collector_id="c1")  # late: ignored for the current model
    view = store.line_model("plant1", "line-1")
    assert view is not None
    assert view.current is not None
    assert view.current.version == 8
    assert view.update is not None
    assert view.update.step == "shadow"
    assert view.previous is not None
    assert store.line_model("plant1", "nope") is None


def test_metrics_series_range_limit_and_order(store):
    batch = [rec(h.metrics(sent_at=h.T0 + timedelta(seconds=10 * i))) for i in range(20)]
    batch.append(rec(h.metrics(line="line-2")))
    store.ingest(batch, collector_id="c1")
    all_points = store.metrics("plant1", "line-1")
    assert len(all_points) == 20
    assert [p.sent_at for p in all_points] == sorted((p.sent_at for p in all_points),
                                                      reverse=True)
    window = store.metrics("plant1", "line-1", since=h.T0 + timedelta(seconds=50),
                           until=h.T0 + timedelta(seconds=100))
    assert [p.sent_at for p in window] == [h.T0 + timedelta(seconds=s) for s in (90, 80, 70, 60,
                                                                                 50)]
    assert len(store.metrics("plant1", "line-1", limit=3)) == 3
    point = all_points[0]
    assert point.defects == sum(point.defects_by_class.values())
    assert point.end_to_end is not None


def test_defect_event_filters(store):
    t = h.T0
    store.ingest([
        rec(h.defect(captured_at=t, classes=("scratches", "inclusion"))),
        rec(h.defect(captured_at=t + timedelta(seconds=1), classes=("patches",))),
        rec(h.defect(line="line-2", captured_at=t + timedelta(seconds=2))),
        rec(h.defect(site="plant2", line="line-1", captured_at=t + timedelta(seconds=3))),
    ], collector_id="c1")
    assert len(store.defect_events()) == 4
    assert [e.line for e in store.defect_events(site="plant1")] == ["line-2", "line-1", "line-1"]
    scratches = store.defect_events(class_name="scratches")
    assert len(scratches) == 3
    both = store.defect_events(site="plant1", line="line-1", class_name="inclusion")
    assert len(both) == 1
    assert [d.class_name for d in both[0].defects] == ["scratches", "inclusion"]
    assert store.defect_events(since=t + timedelta(seconds=1), until=t + timedelta(seconds=3),
                               site="plant1")[0].line == "line-2"
    assert len(store.defect_events(limit=1)) == 1


def test_defect_sizes_in_mm_are_stored_and_served(store):
    # events/defect/2 carries each detection's size on the part plane (None: no scale);
    # events/defect/1 has none
    t = h.T0
    sized = h.defect(captured_at=t).model_copy(update={"defects": [
        SizedDetection(class_id=0, class_name="scratches", score=0.9,
                       box_xyxy=(1.0, 2.0, 30.0, 40.0), size_mm_wh=(1.25, 0.5)),
        SizedDetection(class_id=1, class_name="inclusion", score=0.8,
                       box_xyxy=(5.0, 6.0, 7.0, 8.0))]})
    v1 = DefectEventV1.model_validate(
        {**h.defect(captured_at=t + timedelta(seconds=1)).model_dump(by_alias=True),
         "msg_id": new_msg_id(), "schema": "lineguard.events.defect/1",
         "defects": [{"class_id": 0, "class_name": "pits", "score": 0.8,
                      "box_xyxy": (1.0, 2.0, 3.0, 4.0)}]})
    assert store.ingest([rec(sized), rec(v1)], collector_id="c1").stored == 2
    v1_event, v2_event = store.defect_events()  # newest first
    assert [d.size_mm_wh for d in v1_event.defects] == [None]  # v1: no sizes
    assert [d.size_mm_wh for d in v2_event.defects] == [(1.25, 0.5), None]
    assert sorted(h.query(store.url, "SELECT width_mm, height_mm FROM defects"),
                  key=str) == sorted([(1.25, 0.5), (None, None), (None, None)], key=str)


def test_a_fleet_0001_database_gains_the_size_columns_and_keeps_its_rows(database_url):
    # a database migrated before the sizes existed: its detections are kept, size None
    from alembic import command
    from sqlalchemy import create_engine

    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            cfg = db_migrate._alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "fleet_0001")
            conn.execute(text(
                "INSERT INTO defects (msg_id, idx, class_id, class_name, score, x1, y1, x2,"
                " y2) VALUES ('m1', 0, 0, 'pits', 0.9, 1, 2, 3, 4)"))
    finally:
        engine.dispose()
    store = open_store(database_url)
    try:
        assert "fleet_0002" in store.migrations_applied
        assert h.query(database_url, "SELECT msg_id, width_mm, height_mm FROM defects") == \
            [("m1", None, None)]
    finally:
        store.close()


def test_quarantine_keeps_reason_counts_and_a_bounded_head(database_url):
    store = open_store(database_url, quarantine_keep_bytes=8)
    try:
        deliveries = [
            Delivery("lineguard/a/b/metrics", b"not json at all", 1, 1, NOW_MS, 1),
            Delivery("lineguard/a/b/metrics", b"not json at all", 2, 1, NOW_MS + 5, 1),
            Delivery("elsewhere/x", b"{}", 3, 1, NOW_MS, 1),
        ]
        received, rejected = classify(deliveries)
        assert received == []
        result = store.ingest([], rejected, collector_id="c9")
        assert result.quarantined == 3
        summary = store.quarantine()
        assert summary.total == 3
        assert summary.by_reason == {"malformed_payload": 2, "invalid_topic": 1}
        junk = next(q for q in summary.recent if q.reason == "malformed_payload")
        assert junk.times_seen == 2
        assert junk.payload_bytes == len(b"not json at all")
        assert base64.b64decode(junk.payload_head_b64) == b"not json"
        assert junk.payload_preview == "not json"
        (c,) = store.counters()
        assert c.counters["quarantined.malformed_payload"] == 2
        assert c.counters["quarantined.invalid_topic"] == 1
    finally:
        store.close()


def test_two_writers_on_one_database_never_double_store(database_url):
    a, b = open_store(database_url), open_store(database_url)
    try:
        messages = [rec(h.metrics()) for _ in range(50)]
        ra = a.ingest(messages[:30], collector_id="a")
        rb = b.ingest(messages[10:], collector_id="b")
        assert ra.stored + rb.stored == 50
        assert rb.duplicates == 20
        assert h.query(database_url, "SELECT COUNT(*) FROM metrics") == [(50,)]
    finally:
        a.close()
        b.close()


def test_concurrent_writers_store_and_count_each_message_once(database_url):
    """Two stores commit overlapping batches at the same moment (in opposite orders;
    the second time with other content): each message is stored by exactly one of them,
    the other counts a duplicate, or quarantines a conflict, never both or neither."""
    a, b = open_store(database_url), open_store(database_url)
    try:
        for round_, other_content in ((0, False), (1, False), (2, True)):
            batch = [rec(h.metrics()) for _ in range(40)]
            theirs = [rec(m.message.model_copy(update={"fps": 99.0})) for m in batch] \
                if other_content else list(batch)
            start = threading.Barrier(2)
            results = {}

            def run(store, name, items, start=start, results=results):
                start.wait(timeout=30)
                results[name] = store.ingest(items, collector_id=name)

            threads = [threading.Thread(target=run, args=(a, "a", batch)),
                       threading.Thread(target=run, args=(b, "b", theirs[::-1]))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            ra, rb = results["a"], results["b"]
            assert ra.stored + rb.stored == 40, round_
            if other_content:
                assert (ra.conflicting + rb.conflicting, ra.duplicates + rb.duplicates) == (
                    40, 0)
            else:
                assert (ra.duplicates + rb.duplicates, ra.conflicting + rb.conflicting) == (
                    40, 0)
        assert h.query(database_url, "SELECT COUNT(*) FROM metrics") == [(120,)]
        stored = sum(c.counters.get("stored", 0) for c in a.counters())
        assert stored == 120
    finally:
        a.close()
        b.close()


def test_rejected_rows_do_not_half_commit(store):
    good = rec(h.metrics())
    before = h.query(store.url, "SELECT COUNT(*) FROM messages")
    bad = Rejected("t", b"x", "malformed_payload", "d", NOW_MS)
    # Sabotage: a counter row that violates NOT NULL makes the whole batch roll back.
    with pytest.raises(StoreRejected):
        store.ingest([good], [bad], collector_id=None)  # type: ignore[arg-type]
    assert h.query(store.url, "SELECT COUNT(*) FROM messages") == before
    assert store.ingest([good], collector_id="c1").stored == 1


def test_a_database_migrated_by_a_newer_build_is_refused(database_url):
    open_store(database_url).close()
    url = database_url
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("UPDATE alembic_version SET version_num = 'fleet_9999' "
                     "WHERE version_num LIKE 'fleet_%'")
        conn.close()
    else:
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"),
                             autocommit=True) as pg:
            pg.execute("UPDATE alembic_version SET version_num = 'fleet_9999' "
                       "WHERE version_num LIKE 'fleet_%'")
    with pytest.raises(FleetStoreError, match=r"fleet_9999.*newer lineguard"):
        open_store(database_url)


def test_reading_a_missing_database_is_a_store_error(tmp_path):
    store = open_store(h.sqlite_url(tmp_path / "fleet.db"))
    store.close()
    (tmp_path / "fleet.db").unlink()
    with pytest.raises(FleetStoreError):
        store.lines()


def test_metrics_v1_from_older_lines_fill_end_to_end(database_url):
    # Issue 8 item 1: appliances up to 0.1.0 send metrics/1 with the stage `total`.
    payload = json.dumps({
        "schema": "lineguard.metrics/1", "msg_id": "e" * 32, "site": "plant1",
        "line": "line-1", "sent_at": "2025-03-14T09:00:00Z", "window_s": 10.0, "fps": 1.0,
        "verdicts": {"passed": 10, "failed": 0, "uninspected": 0},
        "latency_ms": {"infer": {"p50_ms": 2.0, "p95_ms": 3.0, "p99_ms": 4.0, "samples": 10},
                       "total": {"p50_ms": 9.0, "p95_ms": 11.0, "p99_ms": 12.0,
                                 "samples": 10}},
        "queue_depths": {"post": 0},
    }).encode()
    message = decode("lineguard/plant1/line-1/metrics", payload)
    store = open_store(database_url)
    try:
        store.ingest([Received(message, payload, 1)], [], collector_id="c1")
        (point,) = store.metrics("plant1", "line-1", since=None, until=None, limit=10)
        assert point.end_to_end is not None and point.end_to_end.p50_ms == 9.0
        assert point.input_fps is None and point.queue_depths == {"post": 0}
    finally:
        store.close()
