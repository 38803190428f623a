"""Read-side queries for the panel and telemetry, over a read-only connection.

Pure functions of a `sqlite3.Connection` (opened with `open_reader`), so they can be
used from any thread with its own connection. Time windows are on `judged_at` (unix
seconds), `since` inclusive and `until` exclusive; `None` leaves that side open.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

import numpy as np

from appliance.records import STAGES, VERDICTS, EventValue


class DefectRow(TypedDict):
    class_id: int
    class_name: str
    score: float
    box_xyxy: tuple[float, float, float, float]  # original frame pixels
    size_mm_wh: tuple[float, float] | None  # on the part plane; None: station not calibrated


class FailureRow(TypedDict):
    frame_id: str
    station: str
    part_id: str | None
    captured_at: float
    judged_at: float
    model_version: str | None
    defects: list[DefectRow]
    image_path: str | None  # absolute path of the kept JPEG, None if not kept (or deleted)
    annotated_image_path: str | None  # its copy with the boxes drawn, None if none


class EventRow(TypedDict):
    id: int
    at: float
    kind: str
    severity: str
    source: str
    message: str
    data: dict[str, EventValue]


class ImageUsage(TypedDict):
    live_count: int
    live_bytes: int
    live_fail_count: int
    deleted_by_reason: dict[str, int]


def open_reader(path: Path, timeout_s: float = 5.0) -> sqlite3.Connection:
    """A connection that cannot write (`PRAGMA query_only`). Raises sqlite3.Error."""
    conn = sqlite3.connect(str(path), timeout=timeout_s, check_same_thread=False)
    conn.execute("PRAGMA query_only = ON")
    return conn


def _window(
    since: float | None, until: float | None, column: str = "judged_at"
) -> tuple[str, list[float]]:
    clauses: list[str] = []
    params: list[float] = []
    if since is not None:
        clauses.append(f"{column} >= ?")
        params.append(since)
    if until is not None:
        clauses.append(f"{column} < ?")
        params.append(until)
    return (" AND ".join(clauses) or "1"), params


LAST_SEQUENCE_SQL = "SELECT max(seq) FROM inspections WHERE station = ?"


def last_sequence(conn: sqlite3.Connection, station: str) -> int | None:
    """The highest seq among `station`'s frame ids (`"<station>:<seq>"`), None if it has
    none. One search of the index `inspections_station_seq` (migration v4)."""
    row = conn.execute(LAST_SEQUENCE_SQL, (station,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def inspection_count(conn: sqlite3.Connection) -> int:
    """Rows in `inspections` (one per frame)."""
    return int(conn.execute("SELECT count(*) FROM inspections").fetchone()[0])


def counts_by_verdict(
    conn: sqlite3.Connection, since: float | None = None, until: float | None = None
) -> dict[str, int]:
    """{verdict: count} for every verdict (0 when absent) in the window."""
    where, params = _window(since, until)
    counts: dict[str, int] = dict.fromkeys(VERDICTS, 0)
    sql = f"SELECT verdict, count(*) FROM inspections WHERE {where} GROUP BY verdict"
    for verdict, n in conn.execute(sql, params):
        counts[verdict] = int(n)
    return counts


def defect_counts_by_class(
    conn: sqlite3.Connection, since: float | None = None, until: float | None = None
) -> dict[str, int]:
    """{class name: number of defects} over the inspections judged in the window."""
    where, params = _window(since, until, "i.judged_at")
    sql = (
        "SELECT d.class_name, count(*) FROM defects d JOIN inspections i"
        f" ON i.id = d.inspection_id WHERE {where} GROUP BY d.class_name ORDER BY d.class_name"
    )
    return {name: int(n) for name, n in conn.execute(sql, params)}


def uninspected_by_reason(
    conn: sqlite3.Connection, since: float | None = None, until: float | None = None
) -> dict[str, int]:
    """{reason: count} of `uninspected` verdicts in the window."""
    where, params = _window(since, until)
    sql = (
        "SELECT reason, count(*) FROM inspections WHERE verdict = 'uninspected'"
        f" AND {where} GROUP BY reason ORDER BY reason"
    )
    return {reason: int(n) for reason, n in conn.execute(sql, params)}


def latency_percentiles(
    conn: sqlite3.Connection,
    stage: str = "total",
    percentiles: Sequence[int] = (50, 95, 99),
    since: float | None = None,
    until: float | None = None,
) -> dict[int, float]:
    """{percentile: ms} of one stage's latency (linear interpolation) over the window;
    {} when the window holds no latency for the stage. Raises ValueError on an unknown
    stage or a percentile outside 0..100."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; known: {STAGES}")
    if any(not 0 <= p <= 100 for p in percentiles):
        raise ValueError(f"percentiles must be within 0..100, got {list(percentiles)}")
    where, params = _window(since, until)
    column = f"{stage}_ms"  # safe: stage is one of STAGES
    rows = conn.execute(
        f"SELECT {column} FROM inspections WHERE {where} AND {column} IS NOT NULL", params
    ).fetchall()
    if not rows or not percentiles:
        return {}
    values = np.fromiter((r[0] for r in rows), dtype=np.float64, count=len(rows))
    result = np.percentile(values, list(percentiles))
    return {int(p): float(v) for p, v in zip(percentiles, result, strict=True)}


def recent_failures(
    conn: sqlite3.Connection, images_dir: Path, limit: int = 50
) -> list[FailureRow]:
    """The last `limit` `fail` inspections, newest first, with their defects and the
    absolute path of their JPEG if it is still kept."""
    rows = conn.execute(
        "SELECT id, frame_id, station, part_id, captured_at, judged_at, model_version"
        " FROM inspections WHERE verdict = 'fail' ORDER BY judged_at DESC, id DESC LIMIT ?",
        (limit,),
    ).fetchall()
    if not rows:
        return []
    ids = [r[0] for r in rows]
    marks = ",".join("?" * len(ids))
    defects: dict[int, list[DefectRow]] = {i: [] for i in ids}
    for iid, cid, name, score, x1, y1, x2, y2, mm_w, mm_h in conn.execute(
        "SELECT inspection_id, class_id, class_name, score, x1_px, y1_px, x2_px, y2_px,"
        f" width_mm, height_mm FROM defects WHERE inspection_id IN ({marks}) ORDER BY id",
        ids,
    ):
        defects[iid].append(
            DefectRow(class_id=cid, class_name=name, score=score, box_xyxy=(x1, y1, x2, y2),
                      size_mm_wh=None if mm_w is None else (mm_w, mm_h))
        )
    frame_ids = [r[1] for r in rows]
    images: dict[str, tuple[str, str | None]] = {
        fid: (path, annotated) for fid, path, annotated in conn.execute(
            f"SELECT frame_id, path, annotated_path FROM images WHERE frame_id IN ({marks})"
            " AND deleted_at IS NULL",
            frame_ids,
        )
    }
    return [
        FailureRow(
            frame_id=fid,
            station=station,
            part_id=part_id,
            captured_at=captured,
            judged_at=judged,
            model_version=model_version,
            defects=defects[iid],
            image_path=str(images_dir / images[fid][0]) if fid in images else None,
            annotated_image_path=(str(images_dir / annotated)
                                  if fid in images and (annotated := images[fid][1])
                                  else None),
        )
        for iid, fid, station, part_id, captured, judged, model_version in rows
    ]


def events(
    conn: sqlite3.Connection,
    since: float | None = None,
    kinds: Sequence[str] | None = None,
    limit: int = 200,
) -> list[EventRow]:
    """Events at or after `since`, of the given kinds (all if None), newest first."""
    where, params = _window(since, None, "at")
    args: list[object] = list(params)
    if kinds is not None:
        if not kinds:
            return []
        where += f" AND kind IN ({','.join('?' * len(kinds))})"
        args += list(kinds)
    args.append(limit)
    sql = (
        "SELECT id, at, kind, severity, source, message, data FROM events"
        f" WHERE {where} ORDER BY at DESC, id DESC LIMIT ?"
    )
    return [
        EventRow(id=i, at=at, kind=k, severity=sev, source=src, message=msg, data=json.loads(d))
        for i, at, k, sev, src, msg, d in conn.execute(sql, args)
    ]


def image_usage(conn: sqlite3.Connection) -> ImageUsage:
    """What the image ledger holds: live images and deletions by reason."""
    live_count, live_bytes, live_fail = conn.execute(
        "SELECT count(*), coalesce(sum(bytes + annotated_bytes), 0),"
        " coalesce(sum(verdict = 'fail'), 0)"
        " FROM images WHERE deleted_at IS NULL"
    ).fetchone()
    deleted = dict(
        conn.execute(
            "SELECT delete_reason, count(*) FROM images WHERE deleted_at IS NOT NULL"
            " GROUP BY delete_reason ORDER BY delete_reason"
        ).fetchall()
    )
    return ImageUsage(
        live_count=int(live_count),
        live_bytes=int(live_bytes),
        live_fail_count=int(live_fail),
        deleted_by_reason={str(k): int(v) for k, v in deleted.items()},
    )
