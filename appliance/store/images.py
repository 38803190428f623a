"""The image keeper: JPEGs of every `fail` frame and a sample of the others, on a budget.

One encoder thread takes offered frames from a bounded queue, encodes them (outside the
pipeline's hot path), makes room, writes the file (temp file + rename) and reports every
change to the store's writer as a ledger operation, which the writer commits to the
`images` table (and summarises as `image_deleted` / `image_skipped` events).

Invariants (after `load`, and after every step of the encoder thread):
- `used_bytes` is the sum of the live files' sizes and never exceeds `quota_bytes`:
  room is made *before* a file is written, and a file that cannot fit is not written.
- A file is written only if it leaves at least `min_free_disk_bytes` free (as reported
  by the injected `free_disk_bytes`, less the file itself).
- Eviction order: oldest non-fail images first; fail images only to make room for a
  newer fail image when nothing else is left (or when the quota shrank between runs).
- Every deletion and every skipped fail frame is reported with a reason; nothing leaves
  the directory silently. After `start`, only the encoder thread touches the directory.
- A kept `fail` frame with detections gets an annotated copy beside it (`annotate_fails`:
  boxes, classes, scores drawn by `annotate.annotate`), `<name>.annotated.jpg`. The pair
  is one ledger entry: its bytes count against the quota together, room is made for both
  before either is written, and they are evicted together.
- A pinned image (a frame with an operator label not yet exported, labels.py) is never
  evicted: eviction plans skip it, and `_delete` re-checks the pin under the lock, so a
  `pin` that returned True holds. A pinned image still counts against the quota.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from appliance.store.annotate import Detection, annotate
from appliance.store.config import ImageKeepConfig
from protocol.atomic import atomic_write_bytes, is_temp_name

logger = logging.getLogger(__name__)

FreeDiskBytes = Callable[[Path], int]
"""Free bytes on the filesystem holding a path (shutil.disk_usage(path).free)."""


def disk_free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds `path` (raises OSError)."""
    return shutil.disk_usage(path).free


@dataclass(frozen=True, slots=True)
class ImageAdded:
    frame_id: str
    path: str  # relative to the images dir
    bytes: int  # of `path`
    verdict: str
    created_at: float
    annotated_path: str | None = None  # the annotated copy, relative to the images dir
    annotated_bytes: int = 0


@dataclass(frozen=True, slots=True)
class ImageDeleted:
    frame_id: str
    path: str
    bytes: int  # of the original and its annotated copy together
    verdict: str
    deleted_at: float
    reason: str  # "quota", "disk_floor", "missing"


@dataclass(frozen=True, slots=True)
class ImageSkipped:
    frame_id: str
    verdict: str
    at: float
    why: str  # backlog, too_large, no_room, disk_floor, encode_failed, write_failed: ...


LedgerOp = ImageAdded | ImageDeleted | ImageSkipped
PostOps = Callable[[Sequence[LedgerOp]], None]


@dataclass(frozen=True, slots=True)
class _Live:
    frame_id: str
    path: str
    bytes: int  # the original and its annotated copy together
    verdict: str
    annotated_path: str | None = None

    def paths(self) -> tuple[str, ...]:
        return (self.path,) if self.annotated_path is None else (self.path, self.annotated_path)


LiveRow = tuple[str, str, int, str, float, str | None, int | None]
"""A live ledger row: frame_id, path, bytes, verdict, created_at, annotated_path,
annotated_bytes (the `images` table's columns)."""


def _size_of(file: Path) -> int:
    """The file's size in bytes, -1 if it does not exist."""
    try:
        return file.stat().st_size
    except FileNotFoundError:
        return -1


def keep_fraction_selects(frame_id: str, fraction: float) -> bool:
    """Deterministic sampling: True for about `fraction` of all frame ids, always the same
    ids for the same fraction (so runs and tests are reproducible)."""
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    h = int.from_bytes(hashlib.blake2b(frame_id.encode(), digest_size=8).digest(), "big")
    return h < fraction * 2.0**64


def plan_evictions(
    evictable: Sequence[tuple[str, int]], need_bytes: int
) -> list[str] | None:
    """Pick the shortest oldest-first prefix of `evictable` ((key, bytes), oldest first)
    that frees at least `need_bytes`; [] if nothing is needed, None if even all of them
    would not free enough (then nothing should be evicted)."""
    if need_bytes <= 0:
        return []
    chosen: list[str] = []
    freed = 0
    for key, size in evictable:
        chosen.append(key)
        freed += size
        if freed >= need_bytes:
            return chosen
    return None


def image_relpath(frame_id: str, verdict: str, created_at: float) -> str:
    """`<UTC day>/<verdict>/<sanitised frame id>-<hash>.jpg`; unique per frame id."""
    day = time.strftime("%Y-%m-%d", time.gmtime(created_at))
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", frame_id)[:80]
    digest = hashlib.blake2b(frame_id.encode(), digest_size=4).hexdigest()
    return f"{day}/{verdict}/{safe}-{digest}.jpg"


def annotated_relpath(relpath: str) -> str:
    """Where the annotated copy of the image at `relpath` goes: beside it."""
    return relpath.removesuffix(".jpg") + ".annotated.jpg"


class ImageKeeper:
    """Keeps JPEGs within `cfg.quota_bytes` and above `cfg.min_free_disk_bytes`.

    `post_ops` receives ledger operations (from `load` and from the encoder thread) and
    must persist them; it must not block for long.
    """

    def __init__(
        self,
        cfg: ImageKeepConfig,
        *,
        post_ops: PostOps,
        clock: Callable[[], float] = time.time,
        free_disk_bytes: FreeDiskBytes = disk_free_bytes,
    ) -> None:
        self._cfg = cfg
        self._dir = cfg.dir
        self._post = post_ops
        self._clock = clock
        self._free_disk = free_disk_bytes
        # live images, oldest first; "fail" images are protected, the rest evictable
        self._fail: OrderedDict[str, _Live] = OrderedDict()
        self._other: OrderedDict[str, _Live] = OrderedDict()
        self._used = 0
        self._fail_bytes = 0
        self._pinned: Counter[str] = Counter()  # frame id -> pins; guarded by _lock
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._jobs: list[tuple[str, str, npt.NDArray[np.uint8], float,
                               Sequence[Detection]]] = []
        self._enqueued = 0
        self._handled = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self.kept = 0
        self.deleted = 0
        self.skipped_pass = 0
        self.skipped_fail = 0

    # ----------------------------------------------------------------- offering
    def wants(self, frame_id: str, verdict: str) -> bool:
        """Whether a frame with this verdict would be kept: `fail` always; `pass` and
        `uninspected` when their frame id is in the `keep_pass_fraction` sample."""
        return verdict == "fail" or keep_fraction_selects(frame_id, self._cfg.keep_pass_fraction)

    def offer(self, frame_id: str, verdict: str, image_bgr: npt.NDArray[np.uint8],
              detections: Sequence[Detection] = ()) -> bool:
        """Queue a frame for keeping if `wants` it (with its `detections`, drawn on the
        annotated copy of a `fail` frame). Non-fail frames are skipped at once when
        the queue is full; fail frames wait up to `fail_offer_timeout_ms`, then are skipped
        and the skip reported. Returns whether the frame was queued. Thread-safe."""
        if not self.wants(frame_id, verdict):
            return False
        at = self._clock()
        with self._cv:
            if self._closed:
                return False
            if len(self._jobs) >= self._cfg.queue_max_images:
                if verdict != "fail":
                    self.skipped_pass += 1
                    return False
                deadline = time.monotonic() + self._cfg.fail_offer_timeout_ms / 1000.0
                while len(self._jobs) >= self._cfg.queue_max_images and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cv.wait(remaining)
                if len(self._jobs) >= self._cfg.queue_max_images or self._closed:
                    self.skipped_fail += 1
                    skipped = ImageSkipped(frame_id, verdict, at, "backlog")
                    self._post([skipped])
                    return False
            self._jobs.append((frame_id, verdict, image_bgr, at, detections))
            self._enqueued += 1
            self._cv.notify_all()
        return True

    # ----------------------------------------------------------------- pinning
    def pin(self, frame_id: str) -> bool:
        """Add a pin to `frame_id`'s image: it is never evicted while it has one (pins
        are counted: one per label waiting for export). Returns False if the image is not
        kept (never kept, or already deleted): then nothing is pinned. Thread-safe."""
        with self._lock:
            if frame_id not in self._fail and frame_id not in self._other:
                return False
            self._pinned[frame_id] += 1
            return True

    def unpin(self, frame_ids: Sequence[str]) -> None:
        """Remove one pin per occurrence of a frame id; an image without pins is evicted
        again by the usual order. Thread-safe."""
        with self._lock:
            for frame_id in frame_ids:
                if frame_id not in self._pinned:
                    continue
                left = self._pinned[frame_id] - 1
                if left > 0:
                    self._pinned[frame_id] = left
                else:
                    del self._pinned[frame_id]

    def preload_pins(self, frame_ids: Sequence[str]) -> None:
        """Pins known from the database (one per occurrence), set before `load` (which
        enforces the quota)."""
        with self._lock:
            self._pinned.update(frame_ids)

    def is_pinned(self, frame_id: str) -> bool:
        with self._lock:
            return self._pinned[frame_id] > 0

    # ----------------------------------------------------------------- lifecycle
    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def protected_bytes(self) -> int:
        """Bytes of images that only a newer `fail` image can evict (`fail` images) or
        none can (pinned ones): when they fill the quota, `fail` images start to go."""
        with self._lock:
            pinned_other = sum(self._other[f].bytes for f in self._pinned if f in self._other)
        return self._fail_bytes + pinned_other

    @property
    def live_count(self) -> int:
        return len(self._fail) + len(self._other)

    @property
    def queued(self) -> int:
        return len(self._jobs)

    def load(self, live: Sequence[LiveRow]) -> list[LedgerOp]:
        """Adopt the ledger's live rows (`LiveRow`), oldest first; reconcile them with the
        directory and enforce the limits. Returns the ledger operations to persist: rows
        whose file (or annotated copy) is missing or has the wrong size are marked deleted
        ("missing"; the other file of the pair is then removed as one without a row); files
        without a row (a crash
        between file and commit) and temp files are removed; then the quota is enforced.
        Call before `start`. Raises OSError if the directory cannot be created or read."""
        self._dir.mkdir(parents=True, exist_ok=True)
        now = self._clock()
        ops: list[LedgerOp] = []
        for frame_id, path, size, verdict, _created, annotated, annotated_size in live:
            files = [(self._dir / path, size)]
            if annotated is not None:
                files.append((self._dir / annotated, annotated_size or 0))
            total = sum(expected for _, expected in files)
            intact = all(_size_of(file) == expected for file, expected in files)
            if not intact or frame_id in self._fail or frame_id in self._other:
                for file, expected in files:  # the pair's intact file is an orphan now
                    if _size_of(file) not in (-1, expected):
                        file.unlink(missing_ok=True)
                ops.append(ImageDeleted(frame_id, path, total, verdict, now, "missing"))
                continue
            self._index_add(_Live(frame_id, path, total, verdict, annotated))
        known = {p for item in (*self._fail.values(), *self._other.values())
                 for p in item.paths()}
        removed = 0
        # only files of our own layout (<day>/<verdict>/<name>.jpg, or a temporary file
        # of an atomic write); anything else in the directory is not ours to delete
        for file in sorted(self._dir.glob("*/*/*")):
            name = file.name
            ours = (name.endswith((".jpg", ".jpg.tmp")) or is_temp_name(name)) and file.is_file()
            if ours and file.relative_to(self._dir).as_posix() not in known:
                file.unlink()
                removed += 1
        for sub in sorted(self._dir.glob("*/*"), reverse=True) + sorted(self._dir.glob("*")):
            if sub.is_dir() and not any(sub.iterdir()):
                sub.rmdir()
        if removed:
            logger.warning("removed %d image files without a ledger row in %s", removed, self._dir)
        ops += self._evict_to(self._cfg.quota_bytes, allow_fail=True, reason="quota")
        return ops

    def start(self) -> None:
        """Start the encoder thread."""
        self._thread = threading.Thread(target=self._run, name="store-images", daemon=True)
        self._thread.start()

    def wait_handled(self, timeout_s: float) -> bool:
        """Wait until every frame queued before this call has been handled (kept or
        skipped, its ledger operations posted); False on timeout or if not running."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            target = self._enqueued
            while self._handled < target:
                remaining = deadline - time.monotonic()
                alive = self._thread is not None and self._thread.is_alive()
                if remaining <= 0 or not alive:
                    return False
                self._cv.wait(min(remaining, 0.5))
        return True

    def stop(self, timeout_s: float) -> bool:
        """Refuse new frames, finish the queued ones, stop the thread; False on timeout."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    # ----------------------------------------------------------------- encoder thread
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not self._closed:
                    self._cv.wait(0.5)
                if not self._jobs:
                    return
                frame_id, verdict, image, at, detections = self._jobs.pop(0)
                self._cv.notify_all()
            try:
                self._post(self._keep(frame_id, verdict, image, at, detections))
            finally:
                with self._cv:
                    self._handled += 1
                    self._cv.notify_all()

    def _encode(self, image: npt.NDArray[np.uint8]) -> bytes | None:
        params = [int(cv2.IMWRITE_JPEG_QUALITY), self._cfg.jpeg_quality]
        ok, buf = cv2.imencode(".jpg", image, params)
        return buf.tobytes() if ok else None

    def _keep(
        self, frame_id: str, verdict: str, image: npt.NDArray[np.uint8], at: float,
        detections: Sequence[Detection] = (),
    ) -> list[LedgerOp]:
        if frame_id in self._fail or frame_id in self._other:
            return []  # a duplicate frame id; the store ignores the duplicate record too
        data = self._encode(image)
        if data is None:
            return [self._skip(frame_id, verdict, at, "encode_failed")]
        annotated: bytes | None = None
        if verdict == "fail" and detections and self._cfg.annotate_fails:
            annotated = self._encode(annotate(image, detections))
            if annotated is None:
                logger.warning("annotated copy of %s not kept: encode failed", frame_id)
        size = len(data) + (0 if annotated is None else len(annotated))
        if size > self._cfg.quota_bytes:
            return [self._skip(frame_id, verdict, at, "too_large")]
        try:
            free = self._free_disk(self._dir)
        except OSError as e:
            return [self._skip(frame_id, verdict, at, f"disk_usage_failed: {e}")]
        ops: list[LedgerOp] = []
        if free < self._cfg.min_free_disk_bytes:
            # the disk is below the floor anyway: give back what sampled images we hold
            ops += self._evict_bytes(self._cfg.min_free_disk_bytes - free, False, "disk_floor")
            free += sum(op.bytes for op in ops if isinstance(op, ImageDeleted))
        need_quota = self._used + size - self._cfg.quota_bytes
        need_disk = self._cfg.min_free_disk_bytes + size - free
        reason = "quota" if need_quota >= need_disk else "disk_floor"
        victims = self._plan(max(need_quota, need_disk), allow_fail=verdict == "fail")
        if victims is None:
            why = "disk_floor" if reason == "disk_floor" else "no_room"
            return [*ops, self._skip(frame_id, verdict, at, why)]
        ops += self._delete(victims, reason)
        if self._used + size > self._cfg.quota_bytes:  # a victim could not be deleted
            return [*ops, self._skip(frame_id, verdict, at, "no_room")]
        rel = image_relpath(frame_id, verdict, at)
        try:
            self._write(self._dir / rel, data)
        except OSError as e:
            return [*ops, self._skip(frame_id, verdict, at, f"write_failed: {e}")]
        annotated_rel: str | None = None
        if annotated is not None:
            annotated_rel = annotated_relpath(rel)
            try:
                self._write(self._dir / annotated_rel, annotated)
            except OSError as e:  # the original is what matters; keep it alone
                logger.warning("annotated copy of %s not kept: %s", frame_id, e)
                annotated_rel, size = None, len(data)
        self._index_add(_Live(frame_id, rel, size, verdict, annotated_rel))
        self.kept += 1
        ops.append(ImageAdded(frame_id, rel, len(data), verdict, at, annotated_rel,
                              size - len(data)))
        return ops

    # ----------------------------------------------------------------- helpers
    def _skip(self, frame_id: str, verdict: str, at: float, why: str) -> ImageSkipped:
        with self._lock:
            if verdict == "fail":
                self.skipped_fail += 1
            else:
                self.skipped_pass += 1
        if verdict == "fail":
            logger.warning("fail image of %s not kept: %s", frame_id, why)
        return ImageSkipped(frame_id, verdict, at, why)

    def _index_add(self, item: _Live) -> None:
        (self._fail if item.verdict == "fail" else self._other)[item.frame_id] = item
        self._used += item.bytes
        if item.verdict == "fail":
            self._fail_bytes += item.bytes

    def _evictable(self, allow_fail: bool) -> list[_Live]:
        pool = list(self._other.values()) + (list(self._fail.values()) if allow_fail else [])
        with self._lock:
            pinned = set(self._pinned)  # only ids with pins are kept in the counter
        return [item for item in pool if item.frame_id not in pinned] if pinned else pool

    def _plan(self, need_bytes: int, *, allow_fail: bool) -> list[_Live] | None:
        pool = self._evictable(allow_fail)
        by_key = {item.path: item for item in pool}
        keys = plan_evictions([(item.path, item.bytes) for item in pool], need_bytes)
        return None if keys is None else [by_key[k] for k in keys]

    def _evict_bytes(self, need_bytes: int, allow_fail: bool, reason: str) -> list[LedgerOp]:
        pool = self._evictable(allow_fail)
        victims: list[_Live] = []
        freed = 0
        for item in pool:
            if freed >= need_bytes:
                break
            victims.append(item)
            freed += item.bytes
        return self._delete(victims, reason)

    def _evict_to(self, limit_bytes: int, *, allow_fail: bool, reason: str) -> list[LedgerOp]:
        return self._evict_bytes(self._used - limit_bytes, allow_fail, reason)

    def _delete(self, victims: Sequence[_Live], reason: str) -> list[LedgerOp]:
        now = self._clock()
        ops: list[LedgerOp] = []
        for item in victims:
            index = self._fail if item.verdict == "fail" else self._other
            with self._lock:  # a pin taken since the plan wins; `pin` sees it gone after
                if item.frame_id in self._pinned:
                    continue
                del index[item.frame_id]
            try:
                for path in reversed(item.paths()):  # the copy first: never left alone
                    (self._dir / path).unlink(missing_ok=True)
            except OSError as e:
                logger.error("cannot delete image %s: %s", item.path, e)
                index[item.frame_id] = item  # still there, still counted
                continue
            self._used -= item.bytes
            if item.verdict == "fail":
                self._fail_bytes -= item.bytes
            self.deleted += 1
            ops.append(
                ImageDeleted(item.frame_id, item.path, item.bytes, item.verdict, now, reason)
            )
        return ops

    def _write(self, file: Path, data: bytes) -> None:
        file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(file, data)
