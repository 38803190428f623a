"""A line's report per time bucket, from its `metrics` messages: parts, pass, fail,
uninspected by reason, yield and failed parts per class (the fleet API's
`GET /lines/{site}/{line}/report`; the same tallies as `lineguard appliance report`).

Buckets are aligned to the Unix epoch (`bucket_s` = 3600: whole UTC hours), so two
queries over different ranges agree on a bucket. A metrics window counts in the bucket
that holds its end (`sent_at`): windows are short (seconds) next to buckets, and a
window is never split. Only buckets that hold at least one window are returned: a
missing bucket means no metrics arrived (the line was off or offline), which is not the
same as zero parts. Yield is passed parts over all parts (an uninspected part is a
reject on the line). Fails per class count parts, not boxes: they come from
`failed_parts_by_class`, which appliances older than that field do not send (their
windows add nothing there).

One indexed range read (`metrics_line_sent`) of the columns it needs; the per-reason
and per-class maps are summed from the payload in Python (portable: no JSON SQL).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Final

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection

from cloud.fleet import sql
from cloud.fleet.rows import from_ms, to_ms

MAX_BUCKETS: Final = 10_000
"""The most buckets one report returns (a larger span needs a larger `bucket_s`)."""

_MIN_MS: Final = -(2**62)
_MAX_MS: Final = 2**62


class ReportTooLarge(ValueError):
    """The range holds more than MAX_BUCKETS buckets of data."""


class ReportTally(BaseModel):
    """Parts in a bucket (or the whole range), by verdict."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    windows: int
    """Metrics messages counted."""
    parts: int
    passed: int
    failed: int
    uninspected: int
    uninspected_by_reason: dict[str, int]
    failed_parts_by_class: dict[str, int]
    yield_pct: float | None
    """Passed over all parts, percent; None without parts."""


class ReportBucket(ReportTally):
    """One bucket: windows whose end (`sent_at`) is in `[start, end)`."""

    start: datetime
    end: datetime


class LineReport(BaseModel):
    """A line's report: the tallies of `[since, until)` in total and per bucket
    (oldest first, only buckets with data)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str
    line: str
    since: datetime | None
    until: datetime | None
    bucket_s: int
    total: ReportTally
    buckets: list[ReportBucket]


class _Sum:
    def __init__(self) -> None:
        self.windows = self.passed = self.failed = self.uninspected = 0
        self.reasons: dict[str, int] = {}
        self.classes: dict[str, int] = {}

    def add(self, passed: int, failed: int, uninspected: int, payload: dict[str, object]) -> None:
        self.windows += 1
        self.passed += passed
        self.failed += failed
        self.uninspected += uninspected
        for key, sums in (("uninspected_by_reason", self.reasons),
                          ("failed_parts_by_class", self.classes)):
            values = payload.get(key)
            if isinstance(values, dict):
                for name, n in values.items():
                    sums[name] = sums.get(name, 0) + int(n)

    def merge(self, other: _Sum) -> None:
        self.windows += other.windows
        self.passed += other.passed
        self.failed += other.failed
        self.uninspected += other.uninspected
        for mine, theirs in ((self.reasons, other.reasons), (self.classes, other.classes)):
            for name, n in theirs.items():
                mine[name] = mine.get(name, 0) + n

    def fields(self) -> dict[str, object]:
        parts = self.passed + self.failed + self.uninspected
        return {
            "windows": self.windows, "parts": parts, "passed": self.passed,
            "failed": self.failed, "uninspected": self.uninspected,
            "uninspected_by_reason": dict(sorted(self.reasons.items())),
            "failed_parts_by_class": dict(sorted(self.classes.items())),
            "yield_pct": round(100.0 * self.passed / parts, 3) if parts else None,
        }


def line_report(
    conn: Connection,
    site: str,
    line: str,
    *,
    since: datetime | None,
    until: datetime | None,
    bucket_s: int,
) -> LineReport:
    """The report of `site`/`line` over `[since, until)` in buckets of `bucket_s`
    seconds (see the module docstring). Raises ValueError for bucket_s < 1 and
    ReportTooLarge when the data spans more than MAX_BUCKETS buckets."""
    if bucket_s < 1:
        raise ValueError("bucket_s must be >= 1")
    bucket_ms = bucket_s * 1000
    query = sql.select_report_rows(site, line, to_ms(since) if since else _MIN_MS,
                                   to_ms(until) if until else _MAX_MS)
    total = _Sum()
    buckets: dict[int, _Sum] = {}
    for sent_ms, passed, failed, uninspected, text in conn.execute(query):
        start = (int(sent_ms) // bucket_ms) * bucket_ms
        bucket = buckets.get(start)
        if bucket is None:
            if len(buckets) >= MAX_BUCKETS:
                raise ReportTooLarge(
                    f"more than {MAX_BUCKETS} buckets of {bucket_s} s: narrow since/until "
                    "or use a larger bucket_s")
            bucket = buckets[start] = _Sum()
        bucket.add(passed, failed, uninspected, json.loads(text))
    for bucket in buckets.values():
        total.merge(bucket)
    return LineReport(
        site=site, line=line, since=since, until=until, bucket_s=bucket_s,
        total=ReportTally.model_validate(total.fields()),
        buckets=[ReportBucket.model_validate({**b.fields(), "start": from_ms(start),
                                              "end": from_ms(start + bucket_ms)})
                 for start, b in buckets.items()],
    )
