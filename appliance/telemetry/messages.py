"""Building the wire messages other than `metrics` from appliance data. Pure functions.

`DefectFacts` is what the verdict sink keeps of a failed part: plain values, no image
(a record's frame must not stay alive in a queue while the broker is away).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from appliance.records import DefectRecord, InspectionRecord
from appliance.telemetry.metrics import Gauges, clean_class_name, is_name, wire_sources
from protocol import DefectEvent, ModelRef, SizedDetection, StatusMessage
from protocol.status import OfflineReason

_MAX_DETECTIONS = 1000
_MAX_PIXELS = 65_535
_MAX_MS = 86_400_000.0
_MAX_ALARMS = 64


def utc(unix_s: float) -> datetime:
    """Unix seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(unix_s, UTC)


@dataclass(frozen=True, slots=True)
class DefectFacts:
    """A failed part as telemetry reports it. `image_size_wh` is (width, height) of the
    original frame in pixels, None when the record carried no frame."""

    frame_id: str
    station: str
    part_id: str | None
    captured_at: float
    judged_at: float
    model_version: str | None
    defects: tuple[DefectRecord, ...]
    total_ms: float | None
    image_size_wh: tuple[int, int] | None


def defect_facts(record: InspectionRecord) -> DefectFacts:
    """What telemetry needs of a `fail` record (cheap: no copies of the frame)."""
    image = record.image_bgr
    size = (int(image.shape[1]), int(image.shape[0])) if image is not None else None
    return DefectFacts(
        frame_id=record.frame_id,
        station=record.station,
        part_id=record.part_id,
        captured_at=record.captured_at,
        judged_at=record.judged_at,
        model_version=record.model_version,
        defects=record.defects,
        total_ms=record.latency_ms.get("total"),
        image_size_wh=size,
    )


def model_ref_from_version_id(version_id: str | None) -> ModelRef | None:
    """Parse the appliance's model version id `"{name}:{version}"`; None if it is not one
    (or the name does not fit the wire)."""
    if not version_id:
        return None
    name, sep, version = version_id.rpartition(":")
    if not sep or not version.isdigit() or not is_name(name):
        return None
    return ModelRef(name=name, version=int(version))


def _box_extent_wh(defects: tuple[DefectRecord, ...]) -> tuple[int, int]:
    # Only when the frame size is unknown: the smallest image that holds every box.
    w = max((d.box_xyxy[2] for d in defects), default=1.0)
    h = max((d.box_xyxy[3] for d in defects), default=1.0)
    return (min(_MAX_PIXELS, max(1, math.ceil(w))), min(_MAX_PIXELS, max(1, math.ceil(h))))


def defect_event(
    facts: DefectFacts,
    *,
    site: str,
    line: str,
    model: ModelRef,
    msg_id: str,
    sent_at: datetime,
    size_fallback_wh: tuple[int, int] | None = None,
) -> DefectEvent:
    """The `events/defect` message of one failed part. The frame size is the record's,
    else `size_fallback_wh` (the station's last known size), else the extent of the
    boxes. At most the 1000 highest-scoring detections are sent.

    Raises pydantic.ValidationError if a value does not fit the wire (e.g. a part id
    with control characters).
    """
    best = sorted(facts.defects, key=lambda d: d.score, reverse=True)[:_MAX_DETECTIONS]
    size = facts.image_size_wh or size_fallback_wh or _box_extent_wh(facts.defects)
    total_ms = facts.total_ms
    if total_ms is None:
        total_ms = (facts.judged_at - facts.captured_at) * 1000.0
    return DefectEvent(
        msg_id=msg_id,
        site=site,
        line=line,
        sent_at=sent_at,
        part_id=facts.part_id or None,
        frame_id=facts.frame_id,
        station=facts.station if is_name(facts.station) else None,
        captured_at=utc(facts.captured_at),
        model=model,
        image_size_wh=(min(_MAX_PIXELS, max(1, size[0])), min(_MAX_PIXELS, max(1, size[1]))),
        defects=[
            SizedDetection(
                class_id=int(d.class_id),
                class_name=clean_class_name(d.class_name),
                score=min(1.0, max(0.0, float(d.score))),
                box_xyxy=(float(d.box_xyxy[0]), float(d.box_xyxy[1]), float(d.box_xyxy[2]),
                          float(d.box_xyxy[3])),
                size_mm_wh=d.size_mm_wh,
            )
            for d in best
        ],
        latency_ms=min(_MAX_MS, max(0.0, total_ms)),
    )


def status_message(
    *,
    site: str,
    line: str,
    msg_id: str,
    sent_at: datetime,
    state: Literal["online", "offline"],
    reason: OfflineReason | None = None,
    app_version: str | None = None,
    started_at: datetime | None = None,
    gauges: Gauges | None = None,
) -> StatusMessage:
    """The retained `status` message; model, sources and alarms from `gauges`."""
    g = gauges or Gauges()
    alarms = list(dict.fromkeys(a for a in g.alarms if is_name(a)))[:_MAX_ALARMS]
    return StatusMessage(
        msg_id=msg_id,
        site=site,
        line=line,
        sent_at=sent_at,
        state=state,
        reason=reason if state == "offline" else None,
        app_version=app_version,
        started_at=started_at,
        model=g.model,
        sources=wire_sources(g.sources),
        alarms=alarms,
    )


def status_key(gauges: Gauges | None) -> tuple[object, ...]:
    """What a status change is: model, sources or alarms differ."""
    g = gauges or Gauges()
    return (g.model, tuple(sorted(g.sources.items())), tuple(sorted(set(g.alarms))))
