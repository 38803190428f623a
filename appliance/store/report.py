"""Answers without SQL: what the line did over a time window (`lineguard appliance
report`), and one part's or frame's verdict (`lineguard appliance show`).

Read-only and safe beside a running appliance: `open_store_reader` opens the file with
`mode=ro` (it never creates one, and never takes the writer's lock). Every query is an
index search: the window is a range of `inspections_judged_at` (failed parts: of the
partial index `inspections_fail_judged_at`, then `defects_inspection_id`); a frame id is
the UNIQUE index, a part id `inspections_part_id` (migration v5).

Counting rules: a part is one inspection (one frame). Yield is passed parts over all
parts: an `uninspected` part is a reject on the line, so it counts against the yield.
Fails per class count failed PARTS with at least one detection of the class (not boxes:
a part with three scratches is one scratch fail); a part with two classes counts under
both, so the classes can add up to more than the fails.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import StoreError
from appliance.store.queries import DefectRow, _window

STATION_COUNTS_SQL = (
    "SELECT station, verdict, reason, count(*) FROM inspections WHERE {where}"
    " GROUP BY station, verdict, reason"
)
FAILED_PARTS_BY_CLASS_SQL = (
    "SELECT i.station, d.class_name, count(DISTINCT i.id) FROM inspections i"
    " JOIN defects d ON d.inspection_id = i.id WHERE i.verdict = 'fail' AND {where}"
    " GROUP BY i.station, d.class_name"
)
_INSPECTION_COLUMNS = (
    "SELECT id, frame_id, station, part_id, captured_at, judged_at, verdict, reason,"
    " model_version, total_ms FROM inspections"
)
BY_FRAME_SQL = f"{_INSPECTION_COLUMNS} WHERE frame_id = ?"
BY_PART_SQL = f"{_INSPECTION_COLUMNS} WHERE part_id = ? ORDER BY judged_at DESC, id DESC LIMIT ?"


def open_store_reader(path: Path, timeout_s: float = 5.0) -> sqlite3.Connection:
    """A read-only connection to an existing store. Raises StoreError if the file does
    not exist or cannot be opened."""
    if not path.is_file():
        raise StoreError(f"no store at {path} (has the appliance run with this data_dir?)")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                               timeout=timeout_s)
        conn.execute("PRAGMA query_only = ON")
    except sqlite3.Error as e:
        raise StoreError(f"{path}: cannot open for reading: {e}") from e
    return conn


@dataclass
class Tally:
    """Parts of one station (or all) in a window, by verdict; see the module docstring."""

    parts: int = 0
    passed: int = 0
    failed: int = 0
    uninspected: int = 0
    uninspected_by_reason: dict[str, int] = field(default_factory=dict)
    failed_parts_by_class: dict[str, int] = field(default_factory=dict)

    @property
    def yield_pct(self) -> float | None:
        """Passed parts over all parts, in percent; None without parts."""
        return 100.0 * self.passed / self.parts if self.parts else None

    def add(self, verdict: str, reason: str | None, n: int) -> None:
        self.parts += n
        if verdict == "pass":
            self.passed += n
        elif verdict == "fail":
            self.failed += n
        else:
            self.uninspected += n
            key = reason or "unknown"
            self.uninspected_by_reason[key] = self.uninspected_by_reason.get(key, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "yield_pct": None if self.yield_pct is None
                else round(self.yield_pct, 3)}


@dataclass(frozen=True)
class LineReport:
    """A window's tallies, per station and for the whole line (unix seconds; `since`
    None: from the first record)."""

    since: float | None
    until: float
    total: Tally
    stations: dict[str, Tally]

    def as_dict(self) -> dict[str, Any]:
        return {"since": self.since, "until": self.until, "total": self.total.as_dict(),
                "stations": {name: t.as_dict() for name, t in self.stations.items()}}


def line_report(conn: sqlite3.Connection, since: float | None, until: float) -> LineReport:
    """The report of the parts judged in `[since, until)` (see the module docstring)."""
    where, params = _window(since, until)
    stations: dict[str, Tally] = defaultdict(Tally)
    total = Tally()
    for station, verdict, reason, n in conn.execute(
            STATION_COUNTS_SQL.format(where=where), params):
        stations[station].add(verdict, reason, int(n))
        total.add(verdict, reason, int(n))
    where, params = _window(since, until, "i.judged_at")
    for station, class_name, n in conn.execute(
            FAILED_PARTS_BY_CLASS_SQL.format(where=where), params):
        for tally in (stations[station], total):
            tally.failed_parts_by_class[class_name] = \
                tally.failed_parts_by_class.get(class_name, 0) + int(n)
    for tally in (total, *stations.values()):
        tally.uninspected_by_reason = dict(sorted(tally.uninspected_by_reason.items()))
        tally.failed_parts_by_class = dict(sorted(tally.failed_parts_by_class.items()))
    return LineReport(since=since, until=until, total=total,
                      stations=dict(sorted(stations.items())))


@dataclass(frozen=True)
class InspectionView:
    """One verdict with its detections and kept images (absolute paths, None if none)."""

    frame_id: str
    station: str
    part_id: str | None
    captured_at: float
    judged_at: float
    verdict: str
    reason: str | None
    model_version: str | None
    total_ms: float | None
    defects: list[DefectRow]
    image_path: str | None
    annotated_image_path: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_inspections(
    conn: sqlite3.Connection, key: str, images_dir: Path, limit: int = 20
) -> list[InspectionView]:
    """The verdict of frame id `key`, or else the newest `limit` verdicts of part id
    `key` (one per station that saw it), newest first; [] if neither is stored."""
    rows = conn.execute(BY_FRAME_SQL, (key,)).fetchall()
    if not rows:
        rows = conn.execute(BY_PART_SQL, (key, limit)).fetchall()
    views = []
    for (iid, frame_id, station, part_id, captured, judged, verdict, reason, model,
         total_ms) in rows:
        defects = [
            DefectRow(class_id=cid, class_name=name, score=score, box_xyxy=(x1, y1, x2, y2),
                      size_mm_wh=None if mm_w is None else (mm_w, mm_h))
            for cid, name, score, x1, y1, x2, y2, mm_w, mm_h in conn.execute(
                "SELECT class_id, class_name, score, x1_px, y1_px, x2_px, y2_px, width_mm,"
                " height_mm FROM defects WHERE inspection_id = ? ORDER BY id", (iid,))
        ]
        image = conn.execute(
            "SELECT path, annotated_path FROM images WHERE frame_id = ? AND deleted_at IS NULL"
            " ORDER BY id DESC LIMIT 1", (frame_id,)).fetchone()
        views.append(InspectionView(
            frame_id=frame_id, station=station, part_id=part_id, captured_at=captured,
            judged_at=judged, verdict=verdict, reason=reason, model_version=model,
            total_ms=total_ms, defects=defects,
            image_path=str(images_dir / image[0]) if image else None,
            annotated_image_path=str(images_dir / image[1]) if image and image[1] else None,
        ))
    return views
