"""Pure mapping from validated wire messages to fleet-store rows (no IO).

Times become BIGINT milliseconds since the Unix epoch (UTC). Row tuples are in the
column order of their table in `cloud.fleet.tables` (`cloud.fleet.sql.row_params`
names them); the line updates' tuples are in `sql.STATUS_KEYS` / `sql.MODEL_KEYS` order.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, cast

from protocol import (
    DefectEvent,
    DefectEventV1,
    Detection,
    DriftSketch,
    DriftSketchV2,
    LatencyStage,
    Message,
    MetricsMessage,
    MetricsMessageV1,
    ModelRef,
    ModelReport,
    SizedDetection,
    StatusMessage,
)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)

# Quarantine keeps topics and reasons for people; bounded so junk cannot bloat a row.
MAX_TOPIC_CHARS: Final = 512
MAX_DETAIL_CHARS: Final = 1000

Row = tuple[object, ...]

V1_END_TO_END: Final = "total"
"""The end-to-end stage's name in `lineguard.metrics/1` as appliances up to 0.1.0 sent it."""

# Quarantine reason of a valid message whose msg_id is already stored with other content.
CONFLICTING_DUPLICATE: Final = "conflicting_duplicate"


def content_digest(message: Message) -> str:
    """sha256 (hex) of the message's canonical JSON: the same for a redelivery of the
    same message however its payload was spaced or ordered, different for any change
    of content."""
    return hashlib.sha256(message.model_dump_json().encode("utf-8")).hexdigest()


def to_ms(value: datetime) -> int:
    """Milliseconds since the Unix epoch of an aware datetime (floored).

    Exact: the float timestamp is rounded to whole microseconds (which it holds exactly
    up to year 2255) before the integer division.
    """
    return round(value.timestamp() * 1_000_000) // 1000


def from_ms(value: int) -> datetime:
    """The aware UTC datetime of epoch milliseconds."""
    return _EPOCH + value * _MS


@dataclass(frozen=True, slots=True)
class Received:
    """A message that passed validation, with its raw payload and receive time."""

    message: Message
    payload: bytes
    received_at_ms: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """A delivery that failed validation (or that the database refused).

    `reason` is a short machine name (e.g. `malformed_payload`), `detail` says why.
    """

    topic: str
    payload: bytes
    reason: str
    detail: str
    received_at_ms: int


@dataclass(slots=True)
class MessageRows:
    """Everything one new message writes: its log row and its kind's rows."""

    message: Row
    status: Row | None = None
    metrics: Row | None = None
    defect_event: Row | None = None
    defects: list[Row] = field(default_factory=list)
    drift: Row | None = None
    model_report: Row | None = None


def _model_cols(model: ModelRef | None) -> tuple[str | None, int | None, str | None]:
    if model is None:
        return None, None, None
    return model.name, model.version, model.label


def _size_mm(d: Detection) -> tuple[float | None, float | None]:
    """(width, height) on the part plane in mm: `events/defect/2` sends them where the
    station has a scale; (None, None) otherwise."""
    size = d.size_mm_wh if isinstance(d, SizedDetection) else None
    return (None, None) if size is None else size


def rows_for(item: Received, stored_at_ms: int) -> MessageRows:
    """The rows of one valid message (pure; the caller writes them in one transaction)."""
    m = item.message
    sent_ms = to_ms(m.sent_at)
    recv_ms = item.received_at_ms
    head = (m.msg_id, m.site, m.line, sent_ms, recv_ms)
    rows = MessageRows(
        message=(m.msg_id, m.KIND.value, m.schema_id, m.site, m.line, sent_ms, recv_ms,
                 stored_at_ms, content_digest(m))
    )
    text = item.payload.decode("utf-8")
    if isinstance(m, StatusMessage):
        rows.status = (*head, m.state, m.reason, text)
    elif isinstance(m, MetricsMessage | MetricsMessageV1):
        e2e = m.latency_ms.get(LatencyStage.END_TO_END)
        if e2e is None and isinstance(m, MetricsMessageV1):
            e2e = m.latency_ms.get(V1_END_TO_END)  # lines up to 0.1.0 named it `total`
        rows.metrics = (
            *head, m.window_s, m.fps, m.verdicts.passed, m.verdicts.failed,
            m.verdicts.uninspected, sum(m.defects_by_class.values()),
            e2e.p50_ms if e2e else None, e2e.p95_ms if e2e else None,
            e2e.p99_ms if e2e else None, m.engine_provider, *_model_cols(m.model)[:2],
            m.outbox.depth if m.outbox else None, text,
        )
    elif isinstance(m, DefectEvent | DefectEventV1):
        rows.defect_event = (
            *head, to_ms(m.captured_at), m.part_id, m.frame_id, m.station, m.model.name,
            m.model.version, m.model.label, m.image_size_wh[0], m.image_size_wh[1],
            m.latency_ms, len(m.defects),
        )
        rows.defects = [
            (m.msg_id, i, d.class_id, d.class_name, d.score, *d.box_xyxy, *_size_mm(d))
            for i, d in enumerate(m.defects)
        ]
    elif isinstance(m, DriftSketch | DriftSketchV2):
        rows.drift = (
            *head, to_ms(m.window_start), to_ms(m.window_end), m.station, m.frame_count,
            *_model_cols(m.ref_model)[:2], text,
        )
    elif isinstance(m, ModelReport):
        update = m.update
        rows.model_report = (
            *head, *_model_cols(m.current), *_model_cols(m.previous),
            update.update_id if update else None, update.step if update else None,
            update.state if update else None, text,
        )
    # Commands (cmd/update, cmd/rollback) are only logged in `messages`.
    return rows


def status_update(item: Received) -> tuple[int, Row] | None:
    """`(status_at_ms, params of UPDATE_LINE_STATUS in STATUS_KEYS order)` for a
    status message, else None.

    A last will (offline, connection_lost) is dated by its receive time: its sent_at is
    when it was registered, at connect, before the statuses it supersedes.
    """
    m = item.message
    if not isinstance(m, StatusMessage):
        return None
    will = m.state == "offline" and m.reason == "connection_lost"
    at_ms = item.received_at_ms if will else to_ms(m.sent_at)
    params: Row = (
        1 if m.state == "online" else 0, m.state, m.reason, at_ms, m.msg_id, m.app_version,
        to_ms(m.started_at) if m.started_at else None,
        json.dumps(m.sources, sort_keys=True), json.dumps(list(m.alarms)),
        m.site, m.line, at_ms,
    )
    return at_ms, params


def model_update(item: Received) -> tuple[int, Row] | None:
    """`(model_at_ms, params of UPDATE_LINE_MODEL)` when the message tells the line's
    current model (a status carrying one, or a model report), else None."""
    m = item.message
    if isinstance(m, StatusMessage) and m.model is not None:
        current: ModelRef | None = m.model
    elif isinstance(m, ModelReport):
        current = m.current
    else:
        return None
    at_ms = to_ms(m.sent_at)
    return at_ms, (*_model_cols(current), at_ms, m.site, m.line, at_ms)


def quarantine_row(item: Rejected, keep_bytes: int) -> Row:
    """A `quarantine` row: id = sha256(topic, payload), payload head base64."""
    digest = hashlib.sha256()
    digest.update(item.topic.encode("utf-8", "surrogatepass"))
    digest.update(b"\x00")
    digest.update(item.payload)
    return (
        digest.hexdigest(), item.topic[:MAX_TOPIC_CHARS], item.reason,
        item.detail[:MAX_DETAIL_CHARS], len(item.payload),
        base64.b64encode(item.payload[:keep_bytes]).decode("ascii"),
        item.received_at_ms, item.received_at_ms, 1,
    )


def merge_quarantine(rows: Sequence[Row]) -> list[Row]:
    """One row per quarantine id (a batch may hold the same junk twice, and one
    statement may not upsert a key twice): times seen summed, first/last widened."""
    merged: dict[object, Row] = {}
    for row in rows:
        old = merged.get(row[0])
        if old is None:
            merged[row[0]] = row
            continue
        first = min(cast(int, old[6]), cast(int, row[6]))
        last = max(cast(int, old[7]), cast(int, row[7]))
        merged[row[0]] = (*old[:6], first, last, cast(int, old[8]) + cast(int, row[8]))
    return list(merged.values())
