"""The store's writer: batched commits, exact counts, duplicates, back-pressure, stop."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from appliance.errors import StoreError
from appliance.records import DefectRecord, EventRecord, InspectionRecord, Verdict
from appliance.store import ImageKeepConfig, Store, StoreConfig

T0 = 1_700_000_000.0
CLASSES = ("scratch", "pit", "crack", "stain")


def make_cfg(tmp_path: Path, **kwargs: object) -> StoreConfig:
    """A store config under tmp_path; `images` may be given as a dict of overrides."""
    image_overrides = kwargs.pop("images", {})
    assert isinstance(image_overrides, dict)
    defaults: dict[str, object] = {"keep_pass_fraction": 0.0, "min_free_disk_bytes": 0}
    images = ImageKeepConfig(dir=tmp_path / "images", **{**defaults, **image_overrides})
    return StoreConfig(path=tmp_path / "store.db", images=images, **kwargs)


def rec(
    i: int,
    verdict: Verdict = "pass",
    *,
    judged_at: float | None = None,
    n_defects: int = 0,
    reason: str | None = None,
    latency_ms: Mapping[str, float] | None = None,
    image: npt.NDArray[np.uint8] | None = None,
    station: str = "s1",
) -> InspectionRecord:
    """A record for frame `station:i`; `uninspected` gets reason "dropped" by default."""
    if verdict == "uninspected" and reason is None:
        reason = "dropped"
    judged = T0 + i if judged_at is None else judged_at
    defects = tuple(
        DefectRecord(k % 4, CLASSES[k % 4], 0.5 + 0.1 * k, (10.0 * k, 5.0, 10.0 * k + 8, 9.0))
        for k in range(n_defects)
    )
    return InspectionRecord(
        frame_id=f"{station}:{i}",
        station=station,
        part_id=f"P{i}",
        captured_at=judged - 0.02,
        judged_at=judged,
        verdict=verdict,
        reason=reason,
        model_version="3",
        preprocess_hash="abc123",
        latency_ms={"total": 10.0 + i % 7, "infer": 4.0} if latency_ms is None else latency_ms,
        defects=defects,
        image_bgr=image,
    )


def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


def db_rows(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def test_batched_write_from_threads_has_exact_counts(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, batch_max_rows=64, flush_interval_ms=5)
    expected = {"pass": 0, "fail": 0, "uninspected": 0}
    n_defects = 0

    def produce(store: Store, start: int) -> None:
        for i in range(start, start + 500):
            verdict: Verdict = ("pass", "fail", "uninspected")[i % 3]
            store.submit(rec(i, verdict, n_defects=(i % 4) if verdict == "fail" else 0))

    for i in range(2000):
        v = ("pass", "fail", "uninspected")[i % 3]
        expected[v] += 1
        n_defects += (i % 4) if v == "fail" else 0
    with Store(cfg) as store:
        threads = [threading.Thread(target=produce, args=(store, k * 500)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        store.flush()
        assert store.inspection_count() == 2000
        assert store.counts_by_verdict() == expected
        stats = store.stats()
        assert stats.submitted == stats.committed == 2000
        assert stats.duplicates_ignored == stats.rows_rejected == 0
    ids = {r[0] for r in db_rows(cfg.path, "SELECT frame_id FROM inspections")}
    assert ids == {f"s1:{i}" for i in range(2000)}
    assert db_rows(cfg.path, "SELECT count(*) FROM defects") == [(n_defects,)]
    orphans = "SELECT count(*) FROM defects WHERE inspection_id NOT IN (SELECT id FROM inspections)"
    assert db_rows(cfg.path, orphans) == [(0,)]
    # every fail row carries its own defects, in the submitted order
    rows = db_rows(
        cfg.path,
        "SELECT i.frame_id, i.defect_count, count(d.id) FROM inspections i"
        " LEFT JOIN defects d ON d.inspection_id = i.id GROUP BY i.id",
    )
    assert all(count == n for _, n, count in rows)
    assert db_rows(cfg.path, "PRAGMA journal_mode") == [("wal",)]


def test_stop_commits_everything_queued(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, flush_interval_ms=60_000, batch_max_rows=100_000)
    store = Store(cfg)
    store.start()
    for i in range(300):
        store.submit(rec(i, "fail", n_defects=1))
    store.record_event(EventRecord(T0, "source_state", "info", "cam0", "streaming"))
    store.stop()  # no flush: the flush interval would hold these for a minute
    assert db_rows(cfg.path, "SELECT count(*) FROM inspections") == [(300,)]
    assert db_rows(cfg.path, "SELECT count(*) FROM events") == [(1,)]
    with pytest.raises(StoreError):
        store.submit(rec(999))


def test_submit_before_start_is_committed_once_started(tmp_path: Path) -> None:
    store = Store(make_cfg(tmp_path))
    store.submit(rec(1))
    with pytest.raises(StoreError):
        store.flush()
    store.start()
    store.flush()
    assert store.inspection_count() == 1
    store.stop()


def test_duplicate_frame_id_is_ignored_and_reported(tmp_path: Path) -> None:
    with Store(make_cfg(tmp_path, flush_interval_ms=60_000)) as store:
        store.submit(rec(1, "uninspected", reason="deadline"))
        store.flush()
        # a late result for the same frame, and a duplicate inside one batch
        store.submit(rec(1, "fail", n_defects=2))
        store.submit(rec(2, "pass"))
        store.submit(rec(3, "fail", n_defects=1))
        store.submit(rec(3, "pass"))
        store.flush()
        assert store.inspection_count() == 3
        assert store.counts_by_verdict() == {"pass": 1, "fail": 1, "uninspected": 1}
        assert store.uninspected_by_reason() == {"deadline": 1}
        assert store.defect_counts_by_class() == {"scratch": 1}
        assert store.stats().duplicates_ignored == 2
        events = store.events(kinds=["duplicate_inspection"])
        assert [e["data"]["count"] for e in events] == [2]
        assert events[0]["severity"] == "warning"


def test_full_queue_blocks_then_raises(tmp_path: Path) -> None:
    store = Store(make_cfg(tmp_path, queue_max_rows=5, submit_timeout_ms=50))
    for i in range(5):
        store.submit(rec(i))
    with pytest.raises(StoreError, match="queue full"):
        store.submit(rec(5))
    store.stop()  # never started: stop still commits what was queued
    assert db_rows(store_path(tmp_path), "SELECT count(*) FROM inspections") == [(5,)]


def test_full_queue_unblocks_when_writer_drains(tmp_path: Path) -> None:
    with Store(make_cfg(tmp_path, queue_max_rows=10, batch_max_rows=4, flush_interval_ms=1)) as s:
        for i in range(500):
            s.submit(rec(i))
        s.flush()
        assert s.inspection_count() == 500


def test_second_store_on_same_database_is_refused(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    with Store(cfg), pytest.raises(StoreError, match="another process"):
        Store(cfg)
    Store(cfg).stop()  # the lock is released on stop


def test_numpy_scalars_are_stored_as_plain_numbers(tmp_path: Path) -> None:
    record = InspectionRecord(
        frame_id="s1:np", station="s1", part_id=None, captured_at=T0, judged_at=T0 + 0.1,
        verdict="fail", reason=None, model_version=None, preprocess_hash=None,
        latency_ms={"total": np.float32(12.5), "infer": np.float64(3.0)},  # type: ignore[dict-item]
        defects=(
            DefectRecord(np.int64(2), "crack", np.float32(0.75), (np.float32(1), 2.0, 3.0, 4.0)),  # type: ignore[arg-type]
        ),
    )
    with Store(make_cfg(tmp_path)) as store:
        store.submit(record)
        store.flush()
        assert store.latency_percentiles("total", (50,)) == {50: 12.5}
        failures = store.recent_failures()
    assert failures[0]["defects"][0] == {
        "class_id": 2, "class_name": "crack", "score": 0.75, "box_xyxy": (1.0, 2.0, 3.0, 4.0),
        "size_mm_wh": None,
    }


def test_readers_cannot_write(tmp_path: Path) -> None:
    from appliance.store.queries import open_reader

    with Store(make_cfg(tmp_path)) as store:
        store.submit(rec(1))
        store.flush()
        conn = open_reader(store_path(tmp_path))
        try:
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                conn.execute("DELETE FROM inspections")
        finally:
            conn.close()


def _flaky(commit: Callable[..., None], failures: int) -> Callable[..., None]:
    """Wrap the writer's commit so that its first `failures` calls fail like a full disk."""
    calls = {"n": 0}

    def commit_or_fail(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise sqlite3.OperationalError("database or disk is full")
        commit(*args, **kwargs)

    return commit_or_fail


def test_transient_write_errors_are_retried_without_loss(tmp_path: Path) -> None:
    store = Store(make_cfg(tmp_path))
    writer = store._writer  # fault injection at the adapter's edge
    writer._commit = _flaky(writer._commit, failures=3)  # type: ignore[method-assign]
    with store:
        for i in range(50):
            store.submit(rec(i))
        store.flush()
        assert store.inspection_count() == 50
        stats = store.stats()
    assert stats.write_retries == 3 and stats.last_error == "database or disk is full"


def test_stop_reports_records_it_could_not_commit(tmp_path: Path) -> None:
    store = Store(make_cfg(tmp_path))
    writer = store._writer
    writer._commit = _flaky(writer._commit, failures=10**9)  # type: ignore[method-assign]
    store.start()
    for i in range(7):
        store.submit(rec(i))
    with pytest.raises(StoreError, match="flush timed out"):
        store.flush(timeout_s=0.2)
    with pytest.raises(StoreError, match="7 records not committed"):
        store.stop(timeout_s=0.2)


def _insert_event(message: str) -> Callable[[sqlite3.Connection], int]:
    """A transaction function: one events row; returns the number of rows it wrote."""
    def work(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO events (at, kind, severity, source, message)"
                     " VALUES (1.0, 'test', 'info', 'test', ?)", (message,))
        return 1
    return work


def test_a_transaction_commits_once_with_its_batch(tmp_path: Path) -> None:
    """A function handed to the writer commits in the batch's transaction; when that batch
    is re-run row by row (a duplicate frame id in it), the function's first run is rolled
    back with it, so its row is there once, and it resolves with its value."""
    with Store(make_cfg(tmp_path, flush_interval_ms=60_000)) as store:
        woken = threading.Event()
        store.submit(rec(1))
        pending = store.transact(_insert_event("outbox"), on_done=woken.set)
        store.submit(rec(1, "fail"))  # refused as a whole: the batch is written row-wise
        assert not pending.done()  # not urgent: it waits for the batch
        assert pending.result(10.0) == 1 and woken.is_set()
        urgent = store.transact(_insert_event("urgent"), urgent=True)
        assert woken.wait(10) and urgent.result(10.0) == 1
        assert store.stats().duplicates_ignored == 1
    assert db_rows(store_path(tmp_path),
                   "SELECT message, count(*) FROM events WHERE kind = 'test' GROUP BY message"
                   " ORDER BY message") == [("outbox", 1), ("urgent", 1)]


def test_a_failing_transaction_rolls_back_alone(tmp_path: Path) -> None:
    def broken(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO events (at, kind, severity, source, message)"
                     " VALUES (1.0, 'test', 'info', 'test', 'half')")
        raise ValueError("a bug in the caller")

    with Store(make_cfg(tmp_path)) as store:
        store.submit(rec(1))
        pending = store.transact(broken)
        with pytest.raises(StoreError, match="rolled back: ValueError: a bug in the caller"):
            pending.result(10.0)
        assert store.inspection_count() == 1
        assert store.events(kinds=["test"]) == []
    with pytest.raises(StoreError, match="not accepting"):
        store.transact(_insert_event("late"))
