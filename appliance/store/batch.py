"""One batch of the store's writer: its items, split into the rows of each statement, and
the SQL it runs. Shared by the writer thread only (writer.py)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from appliance.errors import StoreError
from appliance.store.images import ImageAdded, ImageDeleted, ImageSkipped
from appliance.store.transaction import Pending

Row = tuple[Any, ...]
InspectionItem = tuple[Row, Sequence[Row]]  # (inspection row without id, defect rows)
Item = tuple[int, Any]

INSPECTION, EVENT, LEDGER = 0, 1, 2

INSERT_INSPECTION = (
    "INSERT INTO inspections (id, frame_id, station, part_id, captured_at, judged_at, verdict,"
    " reason, model_version, preprocess_hash, queue_ms, preprocess_ms, batch_wait_ms,"
    " infer_ms, postprocess_ms, total_ms, defect_count, seq)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_DEFECT = (
    "INSERT INTO defects (inspection_id, class_id, class_name, score, x1_px, y1_px, x2_px, y2_px,"
    " width_mm, height_mm) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_EVENT = (
    "INSERT INTO events (at, kind, severity, source, message, data) VALUES (?, ?, ?, ?, ?, ?)"
)
INSERT_IMAGE = (
    "INSERT INTO images (frame_id, path, bytes, verdict, created_at, annotated_path,"
    " annotated_bytes) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
DELETE_IMAGE = (
    "UPDATE images SET deleted_at = ?, delete_reason = ? WHERE id = (SELECT id FROM images"
    " WHERE frame_id = ? AND path = ? AND deleted_at IS NULL ORDER BY id LIMIT 1)"
)
REFUSED = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError,
            sqlite3.DataError)


def event_row(
    at: float, kind: str, severity: str, source: str, message: str, data: dict[str, Any]
) -> Row:
    """An events-table row; `data` must hold JSON scalars (raises ValueError otherwise)."""
    return (at, kind, severity, source, message, json.dumps(data, allow_nan=False))


class Batch:
    """One batch split into the rows of each statement, with ids assigned."""

    def __init__(
        self, items: Sequence[Item], first_id: int, txns: Sequence[Pending[Any]] = ()
    ) -> None:
        self.inspections: list[InspectionItem] = []
        self.events: list[Row] = []
        self.added: list[Row] = []
        self.deleted: list[ImageDeleted] = []
        self.skipped: list[ImageSkipped] = []
        self.txns = list(txns)
        self.outcomes: list[tuple[bool, Any]] = []  # per txn of the last attempt
        for kind, payload in items:
            if kind == INSPECTION:
                self.inspections.append(payload)
            elif kind == EVENT:
                self.events.append(payload)
            elif isinstance(payload, ImageAdded):
                p = payload
                self.added.append((p.frame_id, p.path, p.bytes, p.verdict, p.created_at,
                                   p.annotated_path, p.annotated_bytes))
            elif isinstance(payload, ImageDeleted):
                self.deleted.append(payload)
            else:
                self.skipped.append(payload)
        self.first_id = first_id


def resolve_txns(batch: Batch) -> None:
    """Hand the committed batch's transaction outcomes to their waiters."""
    for txn, (ok, value) in zip(batch.txns, batch.outcomes, strict=True):
        if ok:
            txn.resolve(value)
        else:
            txn.fail(StoreError(f"store transaction rolled back: {value}"))
