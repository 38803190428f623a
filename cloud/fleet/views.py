"""What the fleet store returns to readers (the fleet API serves these as they are).

Times are aware UTC datetimes (ISO 8601 in JSON); units are in the field names.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class _View(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRefView(_View):
    """A model bundle: name, monotonic integer version, label."""

    name: str
    version: int
    label: str | None = None


class LineView(_View):
    """A line and its latest known state.

    `online` is None until a `status` arrived. `status_at` dates that status (its
    `sent_at`, or the receive time for a last will). `model` is the current model from
    the newest `status` or `model` report.
    """

    site: str
    line: str
    online: bool | None
    state: str | None
    reason: str | None
    status_at: datetime | None
    first_seen_at: datetime
    last_seen_at: datetime
    app_version: str | None
    started_at: datetime | None
    sources: dict[str, str]
    alarms: list[str]
    model: ModelRefView | None
    model_at: datetime | None


class LatencyView(_View):
    """End-to-end latency percentiles over a metrics window, milliseconds."""

    p50_ms: float
    p95_ms: float
    p99_ms: float


class MetricsPoint(_View):
    """One `metrics` message: counts are for its window of `window_s` seconds."""

    msg_id: str
    sent_at: datetime
    received_at: datetime
    window_s: float
    fps: float
    passed: int
    failed: int
    uninspected: int
    defects: int
    defects_by_class: dict[str, int]
    end_to_end: LatencyView | None
    input_fps: float | None = None
    """Frames captured per second (metrics/2); above `fps` the line falls behind."""
    queue_depths: dict[str, int] = {}
    sources: dict[str, str] = {}
    engine_provider: str | None
    model_name: str | None
    model_version: int | None
    outbox_depth: int | None


class DetectionView(_View):
    """One detected defect; `box_xyxy` in pixels of the original image, `size_mm_wh`
    its (width, height) on the part plane in millimetres (None: the line's station has
    no calibrated scale, or the line sent `events/defect/1`)."""

    class_id: int
    class_name: str
    score: float
    box_xyxy: tuple[float, float, float, float]
    size_mm_wh: tuple[float, float] | None = None


class DefectEventView(_View):
    """One failed part and what was found on it."""

    msg_id: str
    site: str
    line: str
    sent_at: datetime
    received_at: datetime
    captured_at: datetime
    part_id: str | None
    frame_id: str
    station: str | None
    model: ModelRefView
    image_size_wh: tuple[int, int]
    latency_ms: float | None
    defects: list[DetectionView]


class UpdateView(_View):
    """The latest step of the latest update attempt a line reported."""

    update_id: str
    trigger: str
    cmd_msg_id: str | None
    target: ModelRefView | None
    step: str
    state: str
    progress: float | None
    detail: str | None


class LineModelView(_View):
    """A line's current model, and its latest `model` report (None if none arrived)."""

    site: str
    line: str
    current: ModelRefView | None
    current_since: datetime | None
    previous: ModelRefView | None
    update: UpdateView | None
    report_sent_at: datetime | None


class QuarantinedView(_View):
    """A distinct (topic, payload) that failed validation, and how often it came."""

    quarantine_id: str
    topic: str
    reason: str
    detail: str
    payload_bytes: int
    payload_head_b64: str
    payload_preview: str
    first_received_at: datetime
    last_received_at: datetime
    times_seen: int


class QuarantineSummary(_View):
    """Quarantined deliveries by reason (counting repeats), and the most recent ones."""

    total: int
    by_reason: dict[str, int]
    recent: list[QuarantinedView]


class CollectorCounters(_View):
    """One collector instance's counters (see `cloud.collector`), since it first ran."""

    collector_id: str
    counters: dict[str, int]
    updated_at: datetime
