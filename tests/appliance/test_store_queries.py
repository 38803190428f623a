"""Query functions over a real store, checked against a plain-Python reference."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from appliance.records import EventRecord, InspectionRecord, Verdict
from appliance.store import Store
from appliance.store.queries import LAST_SEQUENCE_SQL, open_reader
from tests.appliance.test_store_writer import CLASSES, T0, make_cfg, rec


def _verdict(i: int) -> Verdict:
    return "fail" if i % 10 == 0 else "uninspected" if i % 10 == 5 else "pass"


RECORDS: list[InspectionRecord] = [
    rec(
        i,
        _verdict(i),
        n_defects=(i % 3) + 1 if _verdict(i) == "fail" else 0,
        reason=("deadline" if i % 20 == 5 else "dropped") if _verdict(i) == "uninspected" else None,
        latency_ms={"total": float(i), "infer": float(i) / 2} if i % 10 != 5 else {},
    )
    for i in range(100)
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(make_cfg(tmp_path_factory.mktemp("queries")))
    s.start()
    for r in RECORDS:
        s.submit(r)
    s.record_event(EventRecord(T0 + 1, "source_state", "info", "cam0", "streaming"))
    s.record_event(EventRecord(T0 + 2, "alarm", "alarm", "engine", "engine down", {"gpu": 0}))
    s.record_event(EventRecord(T0 + 3, "model_change", "info", "updater", "v3 -> v4",
                               {"from": "3", "to": "4", "ok": True}))
    s.flush()
    yield s
    s.stop()


def _in(r: InspectionRecord, since: float | None, until: float | None) -> bool:
    return (since is None or r.judged_at >= since) and (until is None or r.judged_at < until)


WINDOWS = [(None, None), (T0 + 10, T0 + 20), (T0 + 10, None), (None, T0 + 10),
           (T0 + 50, T0 + 51), (T0 + 1000, None)]


@pytest.mark.parametrize(("since", "until"), WINDOWS)
def test_counts_match_reference(store: Store, since: float | None, until: float | None) -> None:
    window = [r for r in RECORDS if _in(r, since, until)]
    verdicts = Counter(r.verdict for r in window)
    assert store.counts_by_verdict(since, until) == {
        v: verdicts.get(v, 0) for v in ("pass", "fail", "uninspected")
    }
    assert store.defect_counts_by_class(since, until) == dict(
        Counter(d.class_name for r in window for d in r.defects)
    )
    assert store.uninspected_by_reason(since, until) == dict(
        Counter(r.reason for r in window if r.verdict == "uninspected")
    )


@pytest.mark.parametrize(("since", "until"), WINDOWS)
@pytest.mark.parametrize("stage", ["total", "infer"])
def test_latency_percentiles_match_numpy(
    store: Store, stage: str, since: float | None, until: float | None
) -> None:
    values = [r.latency_ms[stage] for r in RECORDS if _in(r, since, until) and r.latency_ms]
    got = store.latency_percentiles(stage, (50, 95, 99), since, until)
    if not values:
        assert got == {}
    else:
        expected = np.percentile(values, [50, 95, 99])
        assert got == pytest.approx(dict(zip((50, 95, 99), expected, strict=True)))


def test_missing_stage_is_empty_and_bad_arguments_raise(store: Store) -> None:
    assert store.latency_percentiles("queue") == {}
    with pytest.raises(ValueError, match="unknown stage"):
        store.latency_percentiles("total_ms")
    with pytest.raises(ValueError, match="percentiles"):
        store.latency_percentiles("total", (101,))


def test_inspection_count(store: Store) -> None:
    assert store.inspection_count() == len(RECORDS)


def test_recent_failures_newest_first_with_defects(store: Store) -> None:
    got = store.recent_failures(limit=3)
    assert [f["frame_id"] for f in got] == ["s1:90", "s1:80", "s1:70"]
    by_id = {r.frame_id: r for r in RECORDS}
    for f in got:
        r = by_id[f["frame_id"]]
        assert [d["class_name"] for d in f["defects"]] == [d.class_name for d in r.defects]
        assert [d["box_xyxy"] for d in f["defects"]] == [d.box_xyxy for d in r.defects]
        assert f["image_path"] is None  # no image offered
        assert f["judged_at"] == r.judged_at
    assert set(CLASSES) >= {d["class_name"] for f in got for d in f["defects"]}


def test_events_filters_and_order(store: Store) -> None:
    allev = store.events()
    assert [e["kind"] for e in allev] == ["model_change", "alarm", "source_state"]
    assert allev[0]["data"] == {"from": "3", "to": "4", "ok": True}
    assert [e["kind"] for e in store.events(since=T0 + 2)] == ["model_change", "alarm"]
    assert [e["kind"] for e in store.events(kinds=["alarm"])] == ["alarm"]
    assert store.events(kinds=[]) == []
    assert len(store.events(limit=1)) == 1


def test_recent_failures_uses_the_partial_index(store: Store) -> None:
    conn = sqlite3.connect(str(store.config.path))
    try:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM inspections WHERE verdict = 'fail'"
            " ORDER BY judged_at DESC, id DESC LIMIT 5"
        ).fetchall()
    finally:
        conn.close()
    assert "inspections_fail_judged_at" in " ".join(str(row[-1]) for row in plan)



def test_next_sequence_comes_from_the_index(tmp_path: Path) -> None:
    """A station's next seq after a restart: one more than its highest stored seq (not the
    newest row's), found by one search of the v4 index; ids of another shape and other
    stations do not count."""
    s = Store(make_cfg(tmp_path))
    s.start()
    try:
        assert s.next_sequence("top") == 0 and s.last_sequence("top") is None
        for i in (3, 1200, 7, 99):  # verdicts reach the store out of capture order
            s.submit(rec(i, "pass", station="top"))
        s.submit(rec(5000, "pass", station="side"))
        for odd in ("top:99999x", "other:123456", "top:", "top:-5"):
            s.submit(replace(rec(0, "pass", station="top"), frame_id=odd))
        s.flush()
        assert s.last_sequence("top") == 1200 and s.next_sequence("top") == 1201
        assert s.next_sequence("side") == 5001 and s.next_sequence("new") == 0
        conn = open_reader(s.path)
        try:
            plan = " ".join(str(r[-1]) for r in conn.execute(
                f"EXPLAIN QUERY PLAN {LAST_SEQUENCE_SQL}", ("top",)))
        finally:
            conn.close()
        assert "INDEX inspections_station_seq" in plan, plan
    finally:
        s.stop()
    again = Store(make_cfg(tmp_path))  # a restart reads the same from the file
    try:
        assert again.next_sequence("top") == 1201
    finally:
        again.stop()
