"""The drift component's rows in the cloud database (SQLAlchemy Core, portable SQL).

Every method takes an open connection from the caller's transaction except the
read-and-acknowledge ones the API uses, which open their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection, Engine, and_, insert, select, update

from cloud.drift.detector import DetectorState
from cloud.drift.persist import state_to_json
from cloud.drift.tables import drift_alerts, drift_detectors, drift_windows


class DetectorKey(NamedTuple):
    """One line's station running one model version."""

    site: str
    line: str
    station: str
    model_name: str
    model_version: int

    def where(self, table: Any) -> Any:
        return and_(table.c.site == self.site, table.c.line == self.line,
                    table.c.station == self.station, table.c.model_name == self.model_name,
                    table.c.model_version == self.model_version)


@dataclass(frozen=True)
class DetectorRow:
    reference_source: str
    reference_frames: int
    baseline_json: str | None
    state_json: str


class AlertFields(BaseModel):
    """What a drift alert holds besides where it was raised (station) and the channels
    that moved: shared by the stored row and the fleet API's view of it, so the two
    cannot drift apart."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alert_id: str
    site: str
    line: str
    model_name: str
    model_version: int
    onset_frame_id: int
    onset_at_ms: int
    raised_at_ms: int
    statistic: float
    threshold: float
    mmd_p_value: float
    published: bool
    retrain_requested: bool
    acknowledged_at_ms: int | None
    acknowledged_by: str | None


class AlertRow(AlertFields):
    """A stored drift alert: its station ("-" for none) and the channels that moved
    (name, mean shift in reference SDs)."""

    station: str
    channels: list[tuple[str, float]]


def add_window(conn: Connection, key: DetectorKey, row: dict[str, Any]) -> bool:
    """Insert a window unless its msg_id is known or its frame range overlaps a stored
    window of the same line, station and model (a re-sent or replayed window); returns
    whether it was new."""
    dup = conn.execute(select(drift_windows.c.msg_id).where(
        (drift_windows.c.msg_id == row["msg_id"]) | and_(
            key.where(drift_windows),
            drift_windows.c.first_frame_id <= row["last_frame_id"],
            drift_windows.c.last_frame_id >= row["first_frame_id"])).limit(1)).first()
    if dup is not None:
        return False
    conn.execute(insert(drift_windows).values(**key._asdict(), **row))
    return True


def set_window_statistic(conn: Connection, msg_id: str, statistic: float) -> None:
    conn.execute(update(drift_windows).where(drift_windows.c.msg_id == msg_id)
                 .values(statistic=statistic))


def window_start_ms(conn: Connection, key: DetectorKey, frame_id: int) -> int | None:
    """The start time of the stored window that holds `frame_id`, if any."""
    found = conn.execute(select(drift_windows.c.window_start_ms).where(
        key.where(drift_windows), drift_windows.c.first_frame_id <= frame_id,
        drift_windows.c.last_frame_id >= frame_id).limit(1)).first()
    return None if found is None else int(found[0])


def load_detector(conn: Connection, key: DetectorKey, for_update: bool = True
                  ) -> DetectorRow | None:
    query = select(drift_detectors.c.reference_source, drift_detectors.c.reference_frames,
                   drift_detectors.c.baseline_json, drift_detectors.c.state_json
                   ).where(key.where(drift_detectors))
    found = conn.execute(query.with_for_update() if for_update else query).first()
    return None if found is None else DetectorRow(str(found[0]), int(found[1]), found[2],
                                                  str(found[3]))


def save_detector(conn: Connection, key: DetectorKey, row: DetectorRow, now_ms: int,
                  exists: bool) -> None:
    values = {"reference_source": row.reference_source, "reference_frames": row.reference_frames,
              "baseline_json": row.baseline_json, "state_json": row.state_json,
              "updated_at_ms": now_ms}
    if exists:
        conn.execute(update(drift_detectors).where(key.where(drift_detectors)).values(**values))
    else:
        conn.execute(insert(drift_detectors).values(**key._asdict(), **values))


def insert_alert(conn: Connection, alert: AlertRow) -> None:
    values = alert.model_dump(exclude={"channels"})
    values["channels_json"] = json.dumps([list(c) for c in alert.channels])
    conn.execute(insert(drift_alerts).values(**values))


def _alert(row: Any) -> AlertRow:
    m = dict(row._mapping)
    channels = [(str(n), float(v)) for n, v in json.loads(m.pop("channels_json"))]
    return AlertRow.model_validate({**m, "channels": channels})


class DriftStore:
    """Reads and the few writes outside the monitor's transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def alerts(self, site: str | None = None, line: str | None = None,
               limit: int = 100) -> list[AlertRow]:
        """Alerts, newest first, optionally of one site and line."""
        query = select(drift_alerts).order_by(drift_alerts.c.raised_at_ms.desc()).limit(limit)
        if site is not None:
            query = query.where(drift_alerts.c.site == site)
        if line is not None:
            query = query.where(drift_alerts.c.line == line)
        with self.engine.connect() as conn:
            return [_alert(r) for r in conn.execute(query)]

    def alert(self, alert_id: str) -> AlertRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(drift_alerts).where(
                drift_alerts.c.alert_id == alert_id)).first()
        return None if row is None else _alert(row)

    def mark(self, alert_id: str, *, published: bool | None = None,
             retrain_requested: bool | None = None) -> None:
        values = {k: v for k, v in (("published", published),
                                    ("retrain_requested", retrain_requested)) if v is not None}
        with self.engine.begin() as conn:
            conn.execute(update(drift_alerts).where(drift_alerts.c.alert_id == alert_id)
                         .values(**values))

    def acknowledge(self, alert_id: str, by: str, now_ms: int) -> AlertRow | None:
        """Acknowledge an alert and unlatch its detector (evidence starts again from
        zero, so a drift that goes on raises a new alert). None: no such alert."""
        alert = self.alert(alert_id)
        if alert is None:
            return None
        key = DetectorKey(alert.site, alert.line, alert.station, alert.model_name,
                          alert.model_version)
        with self.engine.begin() as conn:
            conn.execute(update(drift_alerts).where(drift_alerts.c.alert_id == alert_id)
                         .values(acknowledged_at_ms=now_ms, acknowledged_by=by[:128]))
            row = load_detector(conn, key)
            if row is not None and row.baseline_json is not None:
                width = len(json.loads(row.baseline_json)["names"])
                conn.execute(update(drift_detectors).where(key.where(drift_detectors)).values(
                    state_json=state_to_json(DetectorState(np.zeros(width))),
                    updated_at_ms=now_ms))
        return self.alert(alert_id)

    def windows(self, site: str, line: str, limit: int = 500) -> list[dict[str, Any]]:
        """Recent windows of a line (no signal payloads), newest first."""
        cols = [c for c in drift_windows.c if c.name not in ("image_json", "output_json")]
        query = select(*cols).where(drift_windows.c.site == site, drift_windows.c.line == line
                                    ).order_by(drift_windows.c.window_end_ms.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]
