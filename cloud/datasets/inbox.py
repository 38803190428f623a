"""The per-line sample inbox: line tokens, uploads (idempotent by sample id), listing,
and accepting samples into a new dataset version.

Invariants:
- Only a token's sha256 is stored; a token is printed once, when it is made.
- (site, line, sample_id) is unique: a repeated upload stores nothing and says
  `duplicate`; the same id with another image is refused (SampleConflict).
- The image object is written before the row that names it (a crash in between leaves
  an unreferenced object, removed by `gc`).
- Accepting is one transaction: the new version, its items and the samples' state
  (`inbox` -> `accepted`) commit together or not at all.

Labels of an accepted sample follow the panel's export rule (docs/panel-data.md): on a
sample with operator labels, the truth is the boxes of its `confirm` labels (with their
class, which may correct the model's), every `missed` box, and the predictions nobody
reviewed (the operator looked at the frame and left them standing; a prediction is
reviewed when a `confirm` or `reject` label's box matches it, IoU >= 0.9); `reject`ed
predictions are left out; `drop_unreviewed` keeps only what the operator confirmed or
drew. A sample without operator labels is skipped (it stays in the inbox) unless
`include_predictions`, in which case its predictions become its labels. `min_score`
filters the predictions taken either way (they are the line's detections, after its
own thresholds, so the default 0 takes them as the line judged them).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Connection, func, select

from cloud.datasets import tables as t
from cloud.datasets.content import (
    DatasetVersion,
    Item,
    LabelRow,
    canonical_labels,
    check_name,
    class_mapping,
    merge_items,
    remap_labels,
    split_for_hash,
)
from cloud.datasets.errors import (
    DatasetError,
    DatasetRejected,
    SampleError,
    TokenError,
    UnknownDataset,
)
from cloud.datasets.index import DatasetIndex
from models.imagefile import ImageFileError, decode_image, header_size_wh
from protocol.samples import SampleMeta, SampleReceipt

_BOX_TOLERANCE_PX = 1.0


class WrongLineToken(TokenError):
    """A valid token, of another line."""


class SampleConflict(SampleError):
    """The sample id was used before with another image."""


@dataclass(frozen=True)
class InboxEntry:
    """One sample in a line's inbox."""

    site: str
    line: str
    sample_id: str
    frame_id: str
    reason: str
    labelled: bool
    predictions: int
    labels: int
    model: str
    captured_at: datetime
    received_at: datetime
    state: str
    accepted_into: str | None


@dataclass(frozen=True)
class AcceptResult:
    """What `accept` did: the version made, the samples accepted and skipped."""

    version: DatasetVersion
    accepted: int
    skipped: int


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


REVIEW_IOU = 0.9
"""A label's box matching a prediction's at least this well reviews that prediction."""


def iou_xyxy(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes (0 for empty ones)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def sample_rows(meta: SampleMeta, width_px: int, height_px: int, *,
                include_predictions: bool = False, min_score: float = 0.0,
                drop_unreviewed: bool = False) -> list[tuple[str, LabelRow]] | None:
    """The (class name, normalised row) labels of a sample by the module's rule, or None
    when the sample is skipped. Boxes are clipped to the image. Pure."""
    predictions = [p for p in meta.predictions if p.score >= min_score]
    if meta.labels:
        reviewed = [lb.box_xyxy for lb in meta.labels if lb.kind in ("confirm", "reject")]
        boxes = [(lb.class_name, lb.box_xyxy) for lb in meta.labels
                 if lb.kind in ("confirm", "missed")]
        if not drop_unreviewed:
            boxes += [(p.class_name, p.box_xyxy) for p in predictions
                      if all(iou_xyxy(p.box_xyxy, r) < REVIEW_IOU for r in reviewed)]
    elif include_predictions:
        boxes = [(p.class_name, p.box_xyxy) for p in predictions]
    else:
        return None
    rows: list[tuple[str, LabelRow]] = []
    for name, (x1, y1, x2, y2) in boxes:
        x1, x2 = (min(max(v / width_px, 0.0), 1.0) for v in (x1, x2))
        y1, y2 = (min(max(v / height_px, 0.0), 1.0) for v in (y1, y2))
        if x2 <= x1 or y2 <= y1:
            continue  # nothing left inside the image
        rows.append((name, (0, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)))
    return rows


class SampleInbox:
    """Uploaded samples per line, over the dataset index's database and object store."""

    def __init__(self, index: DatasetIndex, *, max_pixels: int = 40_000_000) -> None:
        self.index = index
        self.engine = index.engine
        self.max_pixels = max_pixels

    # ------------------------------------------------------------------ tokens

    def issue_token(self, site: str, line: str) -> str:
        """A new upload token for the line (replacing any earlier one); shown once."""
        token = secrets.token_urlsafe(32)
        row = {"site": site, "line": line, "token_sha256": _hash_token(token),
               "created_at": datetime.now(UTC)}
        with self.index.transaction("store a line token") as conn:
            conn.execute(t.line_tokens.delete().where(t.line_tokens.c.site == site,
                                                      t.line_tokens.c.line == line))
            conn.execute(t.line_tokens.insert().values(**row))
        return token

    def authenticate(self, site: str, line: str, token: str) -> None:
        """Raise TokenError for a missing or unknown token, WrongLineToken for another
        line's. Constant-time on the hash of the token."""
        if not token:
            raise TokenError("missing bearer token")
        digest = _hash_token(token)
        with self.index.connection("read line tokens") as conn:
            row = conn.execute(select(t.line_tokens).where(
                t.line_tokens.c.token_sha256 == digest)).first()
        if row is None or not hmac.compare_digest(row.token_sha256, digest):
            raise TokenError("wrong line token")
        if (row.site, row.line) != (site, line):
            raise WrongLineToken(f"this token is not {site}/{line}'s")

    # ----------------------------------------------------------------- uploads

    def add(self, site: str, line: str, meta: SampleMeta, image: bytes) -> SampleReceipt:
        """Store one uploaded sample, or recognise it as a repeat (`duplicate`). Raises
        SampleError (not a complete JPEG/PNG, too many pixels, a box outside the image),
        SampleConflict (the id was used with another image), DatasetError (storage)."""
        header = header_size_wh(image)
        if header is None or header[0] not in ("jpeg", "png"):
            raise SampleError("image: not a JPEG or PNG file")
        try:
            decoded = decode_image(image, "image", max_pixels=self.max_pixels)
        except ImageFileError as e:
            raise SampleError(str(e)) from e
        height, width = int(decoded.shape[0]), int(decoded.shape[1])
        for what, boxes in (("predictions", [p.box_xyxy for p in meta.predictions]),
                            ("labels", [lb.box_xyxy for lb in meta.labels])):
            for i, (x1, y1, x2, y2) in enumerate(boxes):
                tol = _BOX_TOLERANCE_PX
                if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
                    raise SampleError(f"{what}[{i}]: box {(x1, y1, x2, y2)} is outside the "
                                      f"{width}x{height} image")
        sha = hashlib.sha256(image).hexdigest()
        s = t.line_samples
        where = (s.c.site == site, s.c.line == line, s.c.sample_id == meta.sample_id)
        with self.index.connection("read the inbox") as conn:
            earlier = conn.execute(select(s.c.image_sha256).where(*where)).scalar()
        if earlier is None:  # new: object first, then the row (or a racing twin's row)
            ext = "jpg" if header[0] == "jpeg" else "png"
            self.index.objects.put_bytes(image, sha, ext)
            row: dict[str, Any] = {
                "site": site, "line": line, "sample_id": meta.sample_id,
                "frame_id": meta.frame_id, "captured_at": meta.captured_at,
                "received_at": datetime.now(UTC), "image_sha256": sha,
                "model_name": meta.model.name, "model_version": meta.model.version,
                "reason": meta.reason, "body_json": meta.model_dump_json(by_alias=True),
                "labelled": int(bool(meta.labels)), "state": "inbox", "accepted_into": None,
            }
            image_row = {"sha256": sha, "ext": ext, "width_px": width, "height_px": height,
                         "size_bytes": len(image)}
            with self.index.transaction("store a sample") as conn:
                t.insert_ignoring_duplicates(conn, t.dataset_images, [image_row])
                if t.insert_ignoring_duplicates(conn, s, [row]):
                    return SampleReceipt(sample_id=meta.sample_id, status="stored",
                                         image_sha256=sha)
                earlier = conn.execute(select(s.c.image_sha256).where(*where)).scalar_one()
        if earlier != sha:
            raise SampleConflict(f"sample id {meta.sample_id!r} was uploaded before with "
                                 "another image")
        return SampleReceipt(sample_id=meta.sample_id, status="duplicate", image_sha256=sha)

    # ----------------------------------------------------------------- reading

    def entries(self, site: str | None = None, line: str | None = None,
                state: Literal["inbox", "accepted", "all"] = "inbox") -> list[InboxEntry]:
        """Samples (of one line), oldest first."""
        s = t.line_samples
        query = select(s).order_by(s.c.site, s.c.line, s.c.id)
        if site is not None:
            query = query.where(s.c.site == site)
        if line is not None:
            query = query.where(s.c.line == line)
        if state != "all":
            query = query.where(s.c.state == state)
        with self.index.connection("read the inbox") as conn:
            rows = conn.execute(query).all()
        out = []
        for r in rows:
            meta = SampleMeta.model_validate_json(r.body_json)
            out.append(InboxEntry(
                site=r.site, line=r.line, sample_id=r.sample_id, frame_id=r.frame_id,
                reason=r.reason, labelled=bool(r.labelled), predictions=len(meta.predictions),
                labels=len(meta.labels), model=f"{r.model_name}@{r.model_version}",
                captured_at=_utc(r.captured_at), received_at=_utc(r.received_at),
                state=r.state, accepted_into=r.accepted_into))
        return out

    def counts(self) -> dict[tuple[str, str], dict[str, int]]:
        """Per line: samples per state."""
        s = t.line_samples
        with self.index.connection("read the inbox") as conn:
            rows = conn.execute(select(s.c.site, s.c.line, s.c.state, func.count())
                                .group_by(s.c.site, s.c.line, s.c.state)).all()
        out: dict[tuple[str, str], dict[str, int]] = {}
        for site, line, state, n in rows:
            out.setdefault((site, line), {})[state] = int(n)
        return out

    # --------------------------------------------------------------- accepting

    def accept(self, site: str, line: str, into: str, *, base: str | None = None,
               include_predictions: bool = False, min_score: float = 0.0,
               drop_unreviewed: bool = False,
               classes: Sequence[str] | None = None) -> AcceptResult:
        """Turn the line's inbox into a new version of `into`: the union of `base`
        (default: the latest version of `into`, if any) and the samples labelled by the
        module's rule, each put in train or val by its image hash. Classes: the base's,
        else `into`'s, else `classes`. Raises DatasetRejected (nothing to accept, an
        unknown class, a sample image in the base with other labels), UnknownDataset."""
        check_name(into)
        base_version: DatasetVersion | None = None
        if base is not None:
            base_version = self.index.get(base)
        else:
            try:
                base_version = self.index.get(into)
            except UnknownDataset:
                base_version = None
        target = list(base_version.classes) if base_version else (
            list(classes) if classes else None)
        if not target:
            raise DatasetRejected(f"{into} is a new dataset: give its class names")
        s = t.line_samples
        with self.index.connection("read the inbox") as conn:
            rows = conn.execute(select(s, t.dataset_images.c.ext, t.dataset_images.c.width_px,
                                       t.dataset_images.c.height_px)
                                .join(t.dataset_images,
                                      t.dataset_images.c.sha256 == s.c.image_sha256)
                                .where(s.c.site == site, s.c.line == line,
                                       s.c.state == "inbox").order_by(s.c.id)).all()
        if not rows:
            raise DatasetRejected(f"{site}/{line}: the inbox is empty")
        index_of = {n: i for i, n in enumerate(target)}
        taken: dict[str, Item] = {}
        ids: list[int] = []
        for r in rows:
            meta = SampleMeta.model_validate_json(r.body_json)
            labelled = sample_rows(meta, r.width_px, r.height_px,
                                   include_predictions=include_predictions,
                                   min_score=min_score, drop_unreviewed=drop_unreviewed)
            if labelled is None:
                continue
            unknown = sorted({n for n, _ in labelled if n not in index_of})
            if unknown:
                raise DatasetRejected(
                    f"{site}/{line} sample {r.sample_id}: unknown class(es) "
                    f"{', '.join(unknown)}; the classes are {', '.join(target)}")
            labels = canonical_labels((index_of[n], *row[1:]) for n, row in labelled)
            item = Item(r.image_sha256, r.ext,
                        split_for_hash(r.image_sha256, self.index.val_fraction), labels)
            seen = taken.get(item.image_sha256)
            if seen is not None and seen.labels != item.labels:
                raise DatasetRejected(f"{site}/{line} sample {r.sample_id}: the same image "
                                      "as an earlier sample with different labels")
            taken[item.image_sha256] = item
            ids.append(int(r.id))
        if not ids:
            raise DatasetRejected(
                f"{site}/{line}: no sample has operator labels ({len(rows)} in the inbox); "
                "use --include-predictions to take the model's predictions as labels")
        groups: list[tuple[str, list[Item]]] = []
        parents: list[str] = []
        if base_version is not None:
            mapping = class_mapping(target, base_version.classes, base_version.ref)
            groups.append((base_version.ref, [
                Item(i.image_sha256, i.ext, i.split, remap_labels(i.labels, mapping))
                for i in self.index.items(base_version.ref)]))
            parents.append(base_version.ref)
        groups.append((f"{site}/{line} inbox", list(taken.values())))
        items = merge_items(groups)

        def mark(conn: Connection, version: DatasetVersion) -> None:
            done = conn.execute(s.update().where(s.c.id.in_(ids), s.c.state == "inbox")
                                .values(state="accepted", accepted_into=version.ref)).rowcount
            if done != len(ids):
                raise DatasetError(f"{site}/{line}: the inbox changed while accepting; "
                                   "run accept again")

        version = self.index.create_version(
            into, target, items, [], parents=parents,
            source=f"inbox {site}/{line}: {len(ids)} samples"
            + (" (predictions as labels)" if include_predictions else ""),
            split_rule=self.index.hash_rule if base_version is None
            or base_version.split_rule == self.index.hash_rule else "mixed",
            on_commit=mark)
        return AcceptResult(version=version, accepted=len(ids), skipped=len(rows) - len(ids))
