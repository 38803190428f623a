"""Read queries of the fleet store: rows to views. Each takes an open connection.

Time ranges are half-open: `since` inclusive, `until` exclusive; results come newest
first, at most `limit` of them (page backwards with `until` = the oldest one's time).
"""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Connection

from cloud.fleet import sql
from cloud.fleet.rows import from_ms, to_ms
from cloud.fleet.views import (
    CollectorCounters,
    DefectEventView,
    DetectionView,
    LatencyView,
    LineModelView,
    LineView,
    MetricsPoint,
    ModelRefView,
    QuarantinedView,
    QuarantineSummary,
    UpdateView,
)

# Far enough on either side of any real timestamp; both fit a BIGINT.
_MIN_MS: Final = -(2**62)
_MAX_MS: Final = 2**62

_PREVIEW_BYTES: Final = 1024


def _range(since: datetime | None, until: datetime | None) -> tuple[int, int]:
    return (to_ms(since) if since else _MIN_MS, to_ms(until) if until else _MAX_MS)


def _opt_ms(value: int | None) -> datetime | None:
    return None if value is None else from_ms(value)


def _model(name: str | None, version: int | None, label: str | None) -> ModelRefView | None:
    if name is None or version is None:
        return None
    return ModelRefView(name=name, version=version, label=label)


def _line(row: tuple[Any, ...]) -> LineView:
    (site, line, first_ms, last_ms, online, state, reason, status_ms, app_version,
     started_ms, sources_json, alarms_json, model_name, model_version, model_label,
     model_ms) = row
    return LineView(
        site=str(site), line=str(line),
        online=None if online is None else bool(online),
        state=state, reason=reason,
        status_at=_opt_ms(status_ms),
        first_seen_at=from_ms(first_ms), last_seen_at=from_ms(last_ms),
        app_version=app_version,
        started_at=_opt_ms(started_ms),
        sources=json.loads(sources_json) if sources_json else {},
        alarms=json.loads(alarms_json) if alarms_json else [],
        model=_model(model_name, model_version, model_label),
        model_at=_opt_ms(model_ms),
    )


def lines(conn: Connection) -> list[LineView]:
    """Every line ever heard from, by site and line id."""
    return [_line(row) for row in conn.execute(sql.SELECT_LINES)]


def line(conn: Connection, site: str, line_id: str) -> LineView | None:
    """One line, or None if it never sent a valid message."""
    row = conn.execute(sql.select_line(site, line_id)).fetchone()
    return None if row is None else _line(row)


def metrics(
    conn: Connection,
    site: str,
    line_id: str,
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> list[MetricsPoint]:
    """The line's metrics messages by `sent_at` (the end of each window), newest first."""
    since_ms, until_ms = _range(since, until)
    points = []
    for row in conn.execute(sql.select_metrics(site, line_id, since_ms, until_ms, limit)):
        (msg_id, sent_ms, recv_ms, window_s, fps, passed, failed, uninspected, defects,
         p50, p95, p99, provider, model_name, model_version, outbox_depth, text) = row
        payload = json.loads(text)
        points.append(MetricsPoint(
            msg_id=msg_id, sent_at=from_ms(sent_ms), received_at=from_ms(recv_ms),
            window_s=window_s, fps=fps, passed=passed, failed=failed,
            uninspected=uninspected, defects=defects,
            defects_by_class=payload.get("defects_by_class", {}),
            end_to_end=None if p50 is None else LatencyView(p50_ms=p50, p95_ms=p95, p99_ms=p99),
            input_fps=payload.get("input_fps"), queue_depths=payload.get("queue_depths", {}),
            sources=payload.get("sources", {}),
            engine_provider=provider, model_name=model_name, model_version=model_version,
            outbox_depth=outbox_depth,
        ))
    return points


def defect_events(
    conn: Connection,
    *,
    site: str | None,
    line_id: str | None,
    class_name: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> list[DefectEventView]:
    """Defect events by capture time, newest first; `class_name` keeps events with at
    least one detection of that class (all their detections are returned)."""
    since_ms, until_ms = _range(since, until)
    rows = conn.execute(sql.select_defect_events(
        since_ms=since_ms, until_ms=until_ms, site=site, line=line_id,
        class_name=class_name, limit=limit,
    )).fetchall()
    detections: dict[str, list[DetectionView]] = defaultdict(list)
    ids = [row[0] for row in rows]
    if ids:  # limits are far below SQLite's 32766 bound parameters
        for (msg_id, _idx, class_id, name, score, x1, y1, x2, y2, width_mm,
             height_mm) in conn.execute(sql.select_defects_of(ids)):
            detections[msg_id].append(DetectionView(
                class_id=class_id, class_name=name, score=score, box_xyxy=(x1, y1, x2, y2),
                size_mm_wh=None if width_mm is None or height_mm is None
                else (width_mm, height_mm),
            ))
    events = []
    for row in rows:
        (msg_id, site_, line_, sent_ms, recv_ms, captured_ms, part_id, frame_id, station,
         model_name, model_version, model_label, image_w, image_h, latency_ms) = row
        events.append(DefectEventView(
            msg_id=msg_id, site=site_, line=line_, sent_at=from_ms(sent_ms),
            received_at=from_ms(recv_ms), captured_at=from_ms(captured_ms), part_id=part_id,
            frame_id=frame_id, station=station,
            model=ModelRefView(name=model_name, version=model_version, label=model_label),
            image_size_wh=(image_w, image_h), latency_ms=latency_ms,
            defects=detections.get(msg_id, []),
        ))
    return events


def line_model(conn: Connection, site: str, line_id: str) -> LineModelView | None:
    """The line's current model and latest model report; None for an unknown line."""
    current = line(conn, site, line_id)
    if current is None:
        return None
    row = conn.execute(sql.select_latest_model_report(site, line_id)).fetchone()
    previous: ModelRefView | None = None
    update: UpdateView | None = None
    report_sent_at: datetime | None = None
    if row is not None:
        (_msg_id, sent_ms, _cn, _cv, _cl, prev_name, prev_version, prev_label, text) = row
        previous = _model(prev_name, prev_version, prev_label)
        report_sent_at = from_ms(sent_ms)
        raw = json.loads(text).get("update")
        if raw is not None:
            target = raw.get("target")
            update = UpdateView(
                update_id=raw["update_id"], trigger=raw["trigger"],
                cmd_msg_id=raw.get("cmd_msg_id"),
                target=None if target is None else ModelRefView(**target),
                step=raw["step"], state=raw["state"], progress=raw.get("progress"),
                detail=raw.get("detail"),
            )
    return LineModelView(
        site=site, line=line_id, current=current.model, current_since=current.model_at,
        previous=previous, update=update, report_sent_at=report_sent_at,
    )


def quarantine(conn: Connection, limit: int) -> QuarantineSummary:
    """Counts by reason (repeats included) and the `limit` most recently seen entries."""
    by_reason = {
        str(reason): int(seen)
        for reason, seen, _rows in conn.execute(sql.SELECT_QUARANTINE_BY_REASON)
    }
    recent = []
    for row in conn.execute(sql.select_quarantine_recent(limit)):
        (qid, topic, reason, detail, size, head_b64, first_ms, last_ms, seen) = row
        head = base64.b64decode(head_b64)
        recent.append(QuarantinedView(
            quarantine_id=qid, topic=topic, reason=reason, detail=detail, payload_bytes=size,
            payload_head_b64=head_b64,
            payload_preview=head[:_PREVIEW_BYTES].decode("utf-8", errors="replace"),
            first_received_at=from_ms(first_ms), last_received_at=from_ms(last_ms),
            times_seen=seen,
        ))
    return QuarantineSummary(total=sum(by_reason.values()), by_reason=by_reason, recent=recent)


def counters(conn: Connection) -> list[CollectorCounters]:
    """Every collector instance's counters."""
    values: dict[str, dict[str, int]] = defaultdict(dict)
    updated: dict[str, int] = {}
    for collector_id, name, value, updated_ms in conn.execute(sql.SELECT_COUNTERS):
        values[collector_id][name] = int(value)
        updated[collector_id] = max(updated.get(collector_id, updated_ms), updated_ms)
    return [
        CollectorCounters(collector_id=cid, counters=v, updated_at=from_ms(updated[cid]))
        for cid, v in values.items()
    ]
