"""The fleet store: what the collector writes and the fleet API reads (SQLite by default).

`FleetStore` is the adapter; `Received` / `Rejected` are its input, the views in
`cloud.fleet.views` its output. Schema and SQL: `cloud.fleet.sql` (portable to PostgreSQL).
"""

from cloud.fleet.rows import Received, Rejected, from_ms, to_ms
from cloud.fleet.store import FleetStore, IngestResult, migrate
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

__all__ = [
    "CollectorCounters",
    "DefectEventView",
    "DetectionView",
    "FleetStore",
    "IngestResult",
    "LatencyView",
    "LineModelView",
    "LineView",
    "MetricsPoint",
    "ModelRefView",
    "QuarantineSummary",
    "QuarantinedView",
    "Received",
    "Rejected",
    "UpdateView",
    "from_ms",
    "migrate",
    "to_ms",
]
