"""Operator-labelled frames (the panel's labels, appliance/labels.py) as samples.

Every frame an operator labelled is uploaded with its labels, outside the budget, once
its newest label is `operator_settle_s` old (the operator may still be at it). The
store's `labels` table is read (read-only); the highest label id already turned into
samples is the `operator_label_id` mark (`upload_marks`), so a restart neither repeats
nor skips a frame. A frame labelled again later is sampled again, as a new sample
(`<frame id>.op<newest label id>`) carrying all its labels.

Labels on the wire (protocol/samples.py): a `confirm` or `reject` of a detection names
that detection's class and box (the latest feedback on a detection wins; earlier ones
are not sent); a `missed` label gives its class and box.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.labels import Label, frame_facts, label_from_row

MARK = "operator_label_id"
_LABEL_COLUMNS = ("id, frame_id, kind, author, created_at, defect_index, class_name, x1_px,"
                  " y1_px, x2_px, y2_px, model_version, preprocess_hash, exported_at")


@dataclass(frozen=True, slots=True)
class LabelledFrame:
    frame_id: str
    newest_label_id: int
    captured_at_s: float
    model_version: str | None
    predictions: list[tuple[str, float, tuple[float, float, float, float]]]
    """(class, score, xyxy box) of the frame's detections, in stored order."""
    labels: list[tuple[str, str, tuple[float, float, float, float]]]
    """(kind, class, xyxy box) as sent."""
    image_path: Path | None


def settled_frames(conn: sqlite3.Connection, after_id: int,
                   settled_before_s: float) -> tuple[list[tuple[str, int]], int]:
    """Frames with labels newer than `after_id` whose newest label was made before
    `settled_before_s`: [(frame id, newest label id)] in label order, and the new mark
    (everything at or below it is handled: below the first label of an unsettled
    frame)."""
    rows = conn.execute(
        "SELECT frame_id, max(id), min(id), max(created_at) FROM labels WHERE id > ?"
        " GROUP BY frame_id ORDER BY max(id)", (after_id,)).fetchall()
    unsettled = [int(lo) for _f, _hi, lo, at in rows if float(at) > settled_before_s]
    limit = min(unsettled) - 1 if unsettled else max((int(hi) for _f, hi, _lo, _at in rows),
                                                     default=after_id)
    ready = [(str(f), int(hi)) for f, hi, _lo, at in rows if float(at) <= settled_before_s]
    return ready, max(limit, after_id)


def wire_labels(labels: Sequence[Label],
                defects: Sequence[tuple[str, tuple[float, float, float, float]]]
                ) -> list[tuple[str, str, tuple[float, float, float, float]]]:
    """The labels to send (pure): the latest confirm/reject per detection with the
    detection's class and box, then every missed box."""
    latest: dict[int, str] = {}
    for label in labels:
        if label.kind != "missed" and label.defect_index is not None:
            latest[label.defect_index] = label.kind
    out = [(kind, defects[i][0], defects[i][1]) for i, kind in sorted(latest.items())
           if i < len(defects)]
    out += [("missed", label.class_name, label.box_xyxy) for label in labels
            if label.kind == "missed" and label.class_name is not None
            and label.box_xyxy is not None]
    return out


def labelled_frame(conn: sqlite3.Connection, frame_id: str, newest_label_id: int,
                   images_dir: Path) -> LabelledFrame:
    """Everything a frame's sample needs. Raises UnknownFrame, sqlite3.Error."""
    facts = frame_facts(conn, frame_id, images_dir)
    labels = [label_from_row(r) for r in conn.execute(
        f"SELECT {_LABEL_COLUMNS} FROM labels WHERE frame_id = ? AND id <= ? ORDER BY id",
        (frame_id, newest_label_id)).fetchall()]
    row = conn.execute("SELECT i.captured_at FROM inspections i WHERE i.frame_id = ?",
                       (frame_id,)).fetchone()
    scores = [float(s) for (s,) in conn.execute(
        "SELECT d.score FROM defects d JOIN inspections i ON d.inspection_id = i.id"
        " WHERE i.frame_id = ? ORDER BY d.id", (frame_id,)).fetchall()]
    predictions = [(name, score, box) for (name, box), score in zip(facts.defects, scores,
                                                                     strict=True)]
    return LabelledFrame(frame_id, newest_label_id, float(row[0]),
                         facts.model_version, predictions,
                         wire_labels(labels, facts.defects), facts.image_path)
