"""The fleet store: what the collector writes and the fleet API reads (the cloud
database: SQLite by default, PostgreSQL by URL).

`FleetStore` is the adapter; `Received` / `Rejected` are its input, the views in
`cloud.fleet.views` its output. Tables: `cloud.fleet.tables` (Alembic branch `fleet`);
statements: `cloud.fleet.sql`.
"""

from cloud.fleet.rows import Received, Rejected, from_ms, to_ms
from cloud.fleet.store import FleetStore, IngestResult
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
    "to_ms",
]
