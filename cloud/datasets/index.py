"""`DatasetIndex`: immutable, content-fingerprinted dataset versions over the cloud
database (tables.py) and the content-addressed image store (objects.py).

Invariants:
- A version never changes once written: its items, classes and fingerprint are
  inserted in the same transaction as its row, and nothing updates or deletes them.
- Objects are written before the transaction that refers to them; a failure in between
  leaves only unreferenced objects (removed by `gc`), never a row without its image.
- Under one name, versions are numbered 1, 2, ... and every version has a different
  fingerprint: recording content that the name already has returns that version.
- All versions of one name share the class list of its first version (an import or
  union into an existing name is mapped by class name; a class the name does not have
  is refused).
"""

from __future__ import annotations

import builtins
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import IntegrityError

from cloud.datasets import tables as t
from cloud.datasets.content import (
    DatasetRef,
    DatasetVersion,
    Item,
    SplitRule,
    VersionCounts,
    check_name,
    class_mapping,
    count,
    fingerprint,
    merge_items,
    parse_ref,
    remap_labels,
    split_for_hash,
)
from cloud.datasets.errors import DatasetError, DatasetRejected, UnknownDataset
from cloud.datasets.guard import DatabaseGuard
from cloud.datasets.materialize import write_yolo_folder
from cloud.datasets.objects import ObjectStore
from cloud.datasets.reader import read_yolo

logger = logging.getLogger(__name__)

_INSERT_RETRIES = 5
_WRITE_THREADS = 8


@dataclass(frozen=True)
class ImageRecord:
    """An image object's row (`dataset_images`)."""

    sha256: str
    ext: str
    width_px: int
    height_px: int
    size_bytes: int


OnCommit = Callable[[Connection, DatasetVersion], None]


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _version(row: Any) -> DatasetVersion:
    return DatasetVersion(
        name=row.name, number=row.number, fingerprint=row.fingerprint,
        classes=json.loads(row.classes_json),
        counts=VersionCounts.model_validate_json(row.counts_json),
        parents=json.loads(row.parents_json), split_rule=row.split_rule,
        source=row.source, created_at=_utc(row.created_at))


def _dumps(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class DatasetIndex:
    """Dataset versions in the cloud database, images under `root/objects`.

    `val_fraction`: the share of images an import or inbox acceptance puts in `val`,
    chosen by image hash (content.split_for_hash). Methods raise DatasetError
    subclasses (DatasetRejected, UnknownDataset, BadReference, ObjectStoreError);
    database failures surface as DatasetError naming the operation.
    """

    def __init__(self, engine: Engine, root: Path, *, val_fraction: float = 0.2) -> None:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError("val_fraction must be within 0..1 (exclusive)")
        self.engine = engine
        self.root = Path(root)
        self.objects = ObjectStore(self.root)
        self.val_fraction = val_fraction

    @property
    def hash_rule(self) -> str:
        """The split rule recorded for hash-split versions: `hash:<val fraction>`."""
        return f"hash:{self.val_fraction:g}"

    # ----------------------------------------------------------------- reading

    def get(self, ref: str | DatasetRef) -> DatasetVersion:
        """The version `ref` names (`NAME`: the latest). Raises UnknownDataset,
        BadReference."""
        return self._resolve(ref)[1]

    def list(self, name: str | None = None) -> builtins.list[DatasetVersion]:
        """Every version (of `name`), by name and number."""
        query = select(t.dataset_versions).order_by(t.dataset_versions.c.name,
                                                    t.dataset_versions.c.number)
        if name is not None:
            query = query.where(t.dataset_versions.c.name == check_name(name))
        with self.connection("list datasets") as conn:
            return [_version(row) for row in conn.execute(query)]

    def items(self, ref: str | DatasetRef) -> builtins.list[Item]:
        """The images of a version with their split and canonical labels, by hash."""
        version_id, _ = self._resolve(ref)
        with self.connection("read dataset items") as conn:
            return self._items(conn, version_id)

    def image(self, sha256: str) -> ImageRecord | None:
        """An image object's record, or None."""
        with self.connection("read an image record") as conn:
            row = conn.execute(select(t.dataset_images).where(
                t.dataset_images.c.sha256 == sha256)).first()
        return None if row is None else ImageRecord(row.sha256, row.ext, row.width_px,
                                                    row.height_px, row.size_bytes)

    def _resolve(self, ref: str | DatasetRef) -> tuple[int, DatasetVersion]:
        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        v = t.dataset_versions
        query = select(v).where(v.c.name == parsed.name)
        if parsed.number is not None:
            query = query.where(v.c.number == parsed.number)
        elif parsed.fingerprint_prefix is not None:
            query = query.where(v.c.fingerprint.startswith(parsed.fingerprint_prefix,
                                                           autoescape=True))
        else:
            query = query.order_by(v.c.number.desc()).limit(1)
        with self.connection("read a dataset version") as conn:
            rows = conn.execute(query).all()
            if not rows:
                numbers = conn.execute(select(v.c.number).where(v.c.name == parsed.name)
                                       .order_by(v.c.number)).scalars().all()
        if not rows:
            if not numbers:
                raise UnknownDataset(f"no dataset named {parsed.name!r}")
            raise UnknownDataset(f"no version {parsed} (versions of {parsed.name}: "
                                 f"{', '.join(str(n) for n in numbers)})")
        if len(rows) > 1:
            matches = ", ".join(f"{parsed.name}@{r.number} ({r.fingerprint[:12]})"
                                for r in rows)
            raise UnknownDataset(f"{parsed} is ambiguous: {matches}; give more digits")
        return int(rows[0].id), _version(rows[0])

    @staticmethod
    def _items(conn: Connection, version_id: int) -> builtins.list[Item]:
        i, img = t.dataset_items, t.dataset_images
        rows = conn.execute(
            select(i.c.image_sha256, img.c.ext, i.c.split, i.c.labels)
            .join(img, img.c.sha256 == i.c.image_sha256)
            .where(i.c.version_id == version_id).order_by(i.c.image_sha256))
        return [Item(r.image_sha256, r.ext, r.split, r.labels) for r in rows]

    # ----------------------------------------------------------------- writing

    def import_yolo(self, path: Path, name: str, *, split: SplitRule = "hash",
                    classes: Sequence[str] | None = None,
                    drop_conflicts: bool = False) -> DatasetVersion:
        """Import an Ultralytics YOLO dataset (reader.py says which layouts) as a new
        version of `name`. `split`: `hash` (default) puts each image in train or val by
        its hash (stable across versions); `keep` keeps the dataset's own split (`test`
        counts as val). `classes`: names for a folder without data.yaml or classes.txt.
        `drop_conflicts`: leave out (every copy of) an image that appears twice with
        different labels or splits, instead of refusing; they are logged and named in
        the version's `source`.

        Everything is read and checked before anything is written. Raises
        DatasetRejected (with the file and the reason), BadReference for a bad name."""
        check_name(name)
        source = read_yolo(Path(path), list(classes) if classes is not None else None,
                           drop_conflicts=drop_conflicts)
        for dropped in source.dropped:
            logger.warning("left out %s: a duplicate image with conflicting labels", dropped)
        target = self._classes_of(name) or source.classes
        mapping = class_mapping(target, source.classes, f"{path}")
        items: builtins.list[Item] = []
        records: builtins.list[ImageRecord] = []
        for image in source.images:
            chosen = (split_for_hash(image.sha256, self.val_fraction) if split == "hash"
                      else image.split)
            items.append(Item(image.sha256, image.ext, chosen,
                              remap_labels(image.labels, mapping)))
            records.append(ImageRecord(image.sha256, image.ext, image.width_px,
                                       image.height_px, image.size_bytes))
        # Each object is fsynced (protocol/atomic.py): on a busy disk that, not the copy,
        # is the cost, and concurrent fsyncs overlap.
        with ThreadPoolExecutor(max_workers=_WRITE_THREADS) as pool:
            list(pool.map(lambda i: self.objects.put_file(i.path, i.sha256, i.ext),
                          source.images))
        version = self.create_version(
            name, target, items, records, parents=[],
            source=f"import {source.description}" + (
                f" (left out {len(source.dropped)} conflicting duplicate file(s): "
                + ", ".join(p.name for p in source.dropped[:10]) + ")"
                if source.dropped else ""),
            split_rule=self.hash_rule if split == "hash" else "kept")
        logger.info("dataset %s (%s): %d images from %s", version.ref,
                    version.fingerprint[:12], version.images, path)
        return version

    def union(self, refs: Sequence[str | DatasetRef], name: str) -> DatasetVersion:
        """A new version of `name` holding every image of the versions `refs`. Classes
        are mapped by name onto `name`'s classes (or the first ref's, for a new name);
        an unknown class, or one image with different labels or splits in two refs, is
        refused (DatasetRejected)."""
        check_name(name)
        if not refs:
            raise DatasetRejected("a union needs at least one dataset version")
        versions = [self._resolve(r) for r in refs]
        target = self._classes_of(name) or versions[0][1].classes
        groups: builtins.list[tuple[str, builtins.list[Item]]] = []
        with self.connection("read dataset items") as conn:
            for version_id, version in versions:
                mapping = class_mapping(target, version.classes, version.ref)
                groups.append((version.ref, [
                    Item(i.image_sha256, i.ext, i.split, remap_labels(i.labels, mapping))
                    for i in self._items(conn, version_id)]))
        items = merge_items(groups)
        rules = {v.split_rule for _, v in versions}
        return self.create_version(
            name, target, items, [], parents=[v.ref for _, v in versions],
            source="union " + " ".join(v.ref for _, v in versions),
            split_rule=rules.pop() if len(rules) == 1 else "mixed")

    def _classes_of(self, name: str) -> builtins.list[str] | None:
        v = t.dataset_versions
        with self.connection("read a dataset's classes") as conn:
            row = conn.execute(select(v.c.classes_json).where(v.c.name == name)
                               .order_by(v.c.number).limit(1)).first()
        return None if row is None else list(json.loads(row.classes_json))

    def create_version(
        self, name: str, classes: Sequence[str], items: Sequence[Item],
        images: Sequence[ImageRecord], *, parents: Sequence[str], source: str,
        split_rule: str, on_commit: OnCommit | None = None,
    ) -> DatasetVersion:
        """Record a version in one transaction: the image records (objects must be in
        the store already), the version row and its items. Content `name` already has
        is not recorded again: that version is returned. `on_commit(conn, version)` runs
        inside the same transaction (the inbox marks its samples accepted there).
        Raises DatasetRejected (no images, a referenced image with no object),
        DatasetError (database)."""
        check_name(name)
        if not items:
            raise DatasetRejected(f"{name}: a dataset version needs at least one image")
        fp = fingerprint(classes, items)
        counts = count(classes, items)
        image_rows = [{"sha256": r.sha256, "ext": r.ext, "width_px": r.width_px,
                       "height_px": r.height_px, "size_bytes": r.size_bytes} for r in images]
        v = t.dataset_versions
        for attempt in range(_INSERT_RETRIES):
            try:
                with self.transaction("record a dataset version") as conn:
                    t.insert_ignoring_duplicates(conn, t.dataset_images, image_rows)
                    existing = conn.execute(select(v).where(
                        v.c.name == name, v.c.fingerprint == fp)).first()
                    if existing is not None:
                        version = _version(existing)
                        if on_commit is not None:
                            on_commit(conn, version)
                        logger.info("%s already holds this content as %s", name, version.ref)
                        return version
                    self._check_objects(conn, items)
                    first = conn.execute(select(v.c.classes_json).where(v.c.name == name)
                                         .order_by(v.c.number).limit(1)).scalar()
                    if first is not None and json.loads(first) != list(classes):
                        raise DatasetRejected(
                            f"{name} has the classes {', '.join(json.loads(first))}, not "
                            f"{', '.join(classes)}")
                    number = 1 + int(conn.execute(
                        select(func.coalesce(func.max(v.c.number), 0))
                        .where(v.c.name == name)).scalar_one())
                    created = datetime.now(UTC)
                    version_id = conn.execute(v.insert().values(
                        name=name, number=number, fingerprint=fp,
                        classes_json=_dumps(list(classes)),
                        counts_json=counts.model_dump_json(),
                        parents_json=_dumps(list(parents)), split_rule=split_rule,
                        source=source[:2000], created_at=created,
                    ).returning(v.c.id)).scalar_one()
                    conn.execute(t.dataset_items.insert(), [
                        {"version_id": version_id, "image_sha256": i.image_sha256,
                         "split": i.split, "labels": i.labels} for i in items])
                    version = DatasetVersion(
                        name=name, number=number, fingerprint=fp, classes=list(classes),
                        counts=counts, parents=list(parents), split_rule=split_rule,
                        source=source[:2000], created_at=created)
                    if on_commit is not None:
                        on_commit(conn, version)
                    return version
            except DatasetError as e:
                if attempt + 1 < _INSERT_RETRIES and isinstance(e.__cause__, IntegrityError):
                    continue  # another writer took this number (PostgreSQL): try the next
                raise
        raise DatasetError(f"{name}: could not number the new version")  # pragma: no cover

    def _check_objects(self, conn: Connection, items: Sequence[Item]) -> None:
        known = {r.sha256: r.ext for r in conn.execute(
            select(t.dataset_images.c.sha256, t.dataset_images.c.ext).where(
                t.dataset_images.c.sha256.in_({i.image_sha256 for i in items})))}
        for item in items:
            ext = known.get(item.image_sha256)
            if ext is None or not self.objects.path(item.image_sha256, ext).is_file():
                raise DatasetRejected(
                    f"image {item.image_sha256[:12]} is not in the object store")

    # ------------------------------------------------------------ materialising

    def materialize(self, ref: str | DatasetRef, out_dir: Path) -> Path:
        """Write version `ref` as an Ultralytics YOLO folder at `out_dir`
        (`images/{train,val}/<sha256>.<ext>` hard-linked from the store where possible,
        `labels/...txt`, `data.yaml` with an absolute `path`); return the data.yaml.

        `out_dir` must not exist, be empty, or hold this same version already (then it
        is returned as it is). The folder appears whole (built beside it, renamed).
        Raises DatasetError (not empty, no train or no val images, store errors)."""
        return self._write_yolo(ref, Path(out_dir), holdout=False)

    def holdout(self, ref: str | DatasetRef, out_dir: Path | None = None) -> Path:
        """The `val` split of `ref` alone as a YOLO folder (its data.yaml's `train` and
        `val` both name it), at `out_dir` or `<root>/holdout/<fingerprint>`; the
        data.yaml path. Same rules as `materialize`."""
        version = self.get(ref)
        where = out_dir if out_dir is not None else (
            self.root / "holdout" / version.fingerprint)
        return self._write_yolo(ref, Path(where), holdout=True)

    def new_holdout(self, ref: str | DatasetRef, out_dir: Path) -> tuple[Path, int] | None:
        """The val images of `ref` that none of its parent versions held (after an inbox
        acceptance: the operators' labelled samples) as a holdout folder at `out_dir`:
        (its data.yaml, how many images). None for a version without parent versions
        (an import: all of it is new) or without such images. Same rules as
        `materialize`."""
        version_id, version = self._resolve(ref)
        if not version.parents:
            return None
        parent_ids = [self._resolve(parent)[0] for parent in version.parents]
        with self.connection("read dataset items") as conn:
            items = self._items(conn, version_id)
            held = {item.image_sha256 for parent_id in parent_ids
                    for item in self._items(conn, parent_id)}
        new = [item for item in items if item.split == "val" and item.image_sha256 not in held]
        if not new:
            return None
        return write_yolo_folder(self.objects, version, new, Path(out_dir), holdout=True,
                                 part="new since " + ",".join(version.parents)), len(new)

    def _write_yolo(self, ref: str | DatasetRef, out_dir: Path, *, holdout: bool) -> Path:
        version_id, version = self._resolve(ref)
        with self.connection("read dataset items") as conn:
            items = self._items(conn, version_id)
        return write_yolo_folder(self.objects, version, items, out_dir, holdout=holdout)

    # ------------------------------------------------------------ housekeeping

    def gc(self, *, older_than_s: float = 3600.0) -> builtins.list[Path]:
        """Delete objects no image record names (left by an import or upload that failed
        between writing the object and its row), if older than `older_than_s` (an
        import in progress writes its objects before its rows). The deleted paths."""
        with self.connection("list image records") as conn:
            known = {(r.sha256, r.ext) for r in conn.execute(
                select(t.dataset_images.c.sha256, t.dataset_images.c.ext))}
        cutoff = time.time() - older_than_s
        removed: builtins.list[Path] = []
        for sha, path in self.objects.all_objects():
            ext = path.name.split(".", 1)[1] if "." in path.name else ""
            if (sha, ext) in known or path.stat().st_mtime > cutoff:
                continue
            path.unlink(missing_ok=True)
            removed.append(path)
        return removed

    # ---------------------------------------------------------------- plumbing

    def connection(self, what: str) -> DatabaseGuard:
        """A connection whose database errors become DatasetError("cannot <what>")."""
        return DatabaseGuard(self.engine, what, begin=False)

    def transaction(self, what: str) -> DatabaseGuard:
        """A transaction (committed on a clean exit) whose database errors become
        DatasetError("cannot <what>")."""
        return DatabaseGuard(self.engine, what, begin=True)
