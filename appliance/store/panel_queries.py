"""Read-side queries of the operator panel, over a read-only connection (`open_reader`).

Pure functions of a `sqlite3.Connection`, like queries.py: counters over a window,
per-minute throughput and latency series, the failure gallery (filters and paging by a
cursor) and one frame's detail. Times are unix seconds on `judged_at`; `since`
inclusive, `until` exclusive. Boxes are xyxy in original frame pixels.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TypedDict

import numpy as np

from appliance.store.queries import (
    DefectRow,
    counts_by_verdict,
    defect_counts_by_class,
    uninspected_by_reason,
)


class Counters(TypedDict):
    parts: int
    passed: int
    failed: int
    uninspected: int
    uninspected_by_reason: dict[str, int]
    yield_pct: float | None  # pass / (pass + fail + uninspected), None without parts
    defects_by_class: dict[str, int]


class SeriesPoint(TypedDict):
    start_s: float  # bucket start, unix seconds
    parts: int
    per_s: float  # parts judged per second in the bucket
    p50_ms: float | None  # end-to-end latency (capture to verdict) percentiles
    p99_ms: float | None


class GalleryItem(TypedDict):
    id: int  # the inspection row id (the paging cursor)
    frame_id: str
    station: str
    judged_at: float
    model_version: str | None
    classes: list[str]
    has_image: bool


class FrameDetail(TypedDict):
    id: int
    frame_id: str
    station: str
    part_id: str | None
    captured_at: float
    judged_at: float
    verdict: str
    reason: str | None
    model_version: str | None
    preprocess_hash: str | None
    total_ms: float | None
    defects: list[DefectRow]
    image_path: str | None  # absolute path of the kept JPEG, None when not kept


def counters(conn: sqlite3.Connection, since: float | None, until: float | None) -> Counters:
    """Parts, pass, fail, uninspected (with reasons), yield and defects per class."""
    verdicts = counts_by_verdict(conn, since, until)
    parts = sum(verdicts.values())
    return Counters(
        parts=parts,
        passed=verdicts["pass"],
        failed=verdicts["fail"],
        uninspected=verdicts["uninspected"],
        uninspected_by_reason=uninspected_by_reason(conn, since, until),
        yield_pct=round(100.0 * verdicts["pass"] / parts, 2) if parts else None,
        defects_by_class=defect_counts_by_class(conn, since, until),
    )


def series(conn: sqlite3.Connection, since: float, until: float,
           bucket_s: float = 60.0) -> list[SeriesPoint]:
    """One point per `bucket_s` from `since` to `until` (empty buckets included):
    parts judged, parts per second and end-to-end latency p50/p99 (ms, None when the
    bucket has no latency). Raises ValueError on an empty window or bucket."""
    if bucket_s <= 0 or until <= since:
        raise ValueError(f"need until > since and bucket_s > 0 (got {since}..{until}, "
                         f"{bucket_s})")
    n = int(np.ceil((until - since) / bucket_s))
    rows = conn.execute(
        "SELECT judged_at, total_ms FROM inspections WHERE judged_at >= ? AND judged_at < ?",
        (since, until)).fetchall()
    times = np.fromiter((r[0] for r in rows), dtype=np.float64, count=len(rows))
    lat = np.fromiter((np.nan if r[1] is None else r[1] for r in rows), dtype=np.float64,
                      count=len(rows))
    idx = np.minimum(((times - since) // bucket_s).astype(np.int64), n - 1)
    order = np.argsort(idx, kind="stable")
    idx, lat = idx[order], lat[order]
    bounds = np.searchsorted(idx, np.arange(n + 1))
    points: list[SeriesPoint] = []
    for b in range(n):
        chunk = lat[bounds[b]:bounds[b + 1]]
        chunk = chunk[~np.isnan(chunk)]
        parts = int(bounds[b + 1] - bounds[b])
        p50 = p99 = None
        if chunk.size:
            p50, p99 = (float(v) for v in np.percentile(chunk, [50, 99]))
        points.append(SeriesPoint(start_s=since + b * bucket_s, parts=parts,
                                  per_s=round(parts / bucket_s, 3),
                                  p50_ms=None if p50 is None else round(p50, 2),
                                  p99_ms=None if p99 is None else round(p99, 2)))
    return points


def gallery(
    conn: sqlite3.Connection,
    *,
    class_name: str | None = None,
    station: str | None = None,
    since: float | None = None,
    until: float | None = None,
    before_id: int | None = None,
    limit: int = 24,
) -> list[GalleryItem]:
    """`fail` inspections, newest first, filtered by defect class, station and judged
    time; `before_id` pages on (items with a smaller row id). Raises ValueError on a
    limit outside 1..200."""
    if not 1 <= limit <= 200:
        raise ValueError(f"limit must be within 1..200, got {limit}")
    clauses = ["i.verdict = 'fail'"]
    params: list[object] = []
    if station is not None:
        clauses.append("i.station = ?")
        params.append(station)
    if since is not None:
        clauses.append("i.judged_at >= ?")
        params.append(since)
    if until is not None:
        clauses.append("i.judged_at < ?")
        params.append(until)
    if before_id is not None:
        clauses.append("i.id < ?")
        params.append(before_id)
    if class_name is not None:
        clauses.append("EXISTS (SELECT 1 FROM defects d WHERE d.inspection_id = i.id"
                       " AND d.class_name = ?)")
        params.append(class_name)
    params.append(limit)
    rows = conn.execute(
        "SELECT i.id, i.frame_id, i.station, i.judged_at, i.model_version,"
        " EXISTS (SELECT 1 FROM images m WHERE m.frame_id = i.frame_id"
        " AND m.deleted_at IS NULL)"
        f" FROM inspections i WHERE {' AND '.join(clauses)} ORDER BY i.id DESC LIMIT ?",
        params).fetchall()
    if not rows:
        return []
    ids = [r[0] for r in rows]
    classes: dict[int, list[str]] = {i: [] for i in ids}
    for iid, name in conn.execute(
        "SELECT DISTINCT inspection_id, class_name FROM defects WHERE inspection_id IN"
        f" ({','.join('?' * len(ids))}) ORDER BY class_name", ids):
        classes[iid].append(name)
    return [GalleryItem(id=iid, frame_id=fid, station=st, judged_at=at, model_version=mv,
                        classes=classes[iid], has_image=bool(img))
            for iid, fid, st, at, mv, img in rows]


def frame_detail(conn: sqlite3.Connection, images_dir: Path, frame_id: str) -> FrameDetail | None:
    """One frame's verdict with its defects, model version, preprocessing hash and the
    path of its kept JPEG; None for an unknown frame id."""
    row = conn.execute(
        "SELECT id, frame_id, station, part_id, captured_at, judged_at, verdict, reason,"
        " model_version, preprocess_hash, total_ms FROM inspections WHERE frame_id = ?",
        (frame_id,)).fetchone()
    if row is None:
        return None
    defects = [DefectRow(class_id=c, class_name=n, score=s, box_xyxy=(x1, y1, x2, y2),
                         size_mm_wh=None if w_mm is None else (w_mm, h_mm))
               for c, n, s, x1, y1, x2, y2, w_mm, h_mm in conn.execute(
                   "SELECT class_id, class_name, score, x1_px, y1_px, x2_px, y2_px,"
                   " width_mm, height_mm FROM defects WHERE inspection_id = ? ORDER BY id",
                   (row[0],))]
    image = conn.execute(
        "SELECT path FROM images WHERE frame_id = ? AND deleted_at IS NULL"
        " ORDER BY id DESC LIMIT 1", (frame_id,)).fetchone()
    return FrameDetail(id=row[0], frame_id=row[1], station=row[2], part_id=row[3],
                       captured_at=row[4], judged_at=row[5], verdict=row[6], reason=row[7],
                       model_version=row[8], preprocess_hash=row[9], total_ms=row[10],
                       defects=defects,
                       image_path=str(images_dir / image[0]) if image else None)

