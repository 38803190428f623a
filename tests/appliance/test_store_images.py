"""The image keeper: quota, free-disk floor, eviction order, accounting, reconciliation."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from appliance.records import Verdict
from appliance.store import Store, StoreConfig
from appliance.store.images import image_relpath, keep_fraction_selects, plan_evictions
from tests.appliance.test_store_writer import T0, db_rows, make_cfg, rec

SHAPE = (48, 64, 3)


def noisy(seed: int) -> npt.NDArray[np.uint8]:
    """Random noise compresses badly, so each JPEG is a few kB."""
    return np.random.default_rng(seed).integers(0, 256, SHAPE, dtype=np.uint8)


def jpeg_size(seed: int, quality: int = 90) -> int:
    ok, buf = cv2.imencode(".jpg", noisy(seed), [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    assert ok
    return int(buf.size)


def dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def counter_clock() -> Callable[[], float]:
    ticks = itertools.count()
    return lambda: T0 + next(ticks)


class FakeDisk:
    """Free bytes = `capacity` minus what the images directory holds; records what it saw."""

    def __init__(self, root: Path, capacity: int) -> None:
        self.root = root
        self.capacity = capacity
        self.max_used = 0
        self.min_free: int | None = None

    def __call__(self, path: Path) -> int:
        assert path == self.root
        used = dir_bytes(self.root)
        free = self.capacity - used
        self.max_used = max(self.max_used, used)
        self.min_free = free if self.min_free is None else min(self.min_free, free)
        return free


def live_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.jpg")}


def ledger(cfg: StoreConfig) -> list[tuple[object, ...]]:
    return db_rows(
        cfg.path,
        "SELECT frame_id, path, bytes, verdict, created_at, deleted_at, delete_reason,"
        " annotated_path, annotated_bytes FROM images ORDER BY id",
    )


def assert_ledger_matches_disk(cfg: StoreConfig) -> None:
    rows = ledger(cfg)
    live = [r for r in rows if r[5] is None]
    # a kept fail image's annotated copy is part of its ledger row
    assert {str(p) for r in live for p in (r[1], r[7]) if p} == live_files(cfg.images.dir)
    assert sum(int(str(r[2])) + int(str(r[8])) for r in live) == dir_bytes(cfg.images.dir)
    deleted = [r for r in rows if r[5] is not None]
    events = db_rows(cfg.path, "SELECT data FROM events WHERE kind = 'image_deleted'")
    assert sum(json.loads(str(e[0]))["count"] for e in events) == len(deleted)


# ---------------------------------------------------------------------- pure parts
@pytest.mark.parametrize(
    ("sizes", "need", "expected"),
    [
        ([("a", 5), ("b", 5)], 0, []),
        ([("a", 5), ("b", 5)], -3, []),
        ([("a", 5), ("b", 5)], 5, ["a"]),
        ([("a", 5), ("b", 5)], 6, ["a", "b"]),
        ([("a", 5), ("b", 5)], 11, None),
        ([], 1, None),
    ],
)
def test_plan_evictions(
    sizes: list[tuple[str, int]], need: int, expected: list[str] | None
) -> None:
    assert plan_evictions(sizes, need) == expected


def test_pass_sampling_is_deterministic_and_nested() -> None:
    ids = [f"line1:{i}" for i in range(20_000)]
    tenth = {i for i in ids if keep_fraction_selects(i, 0.1)}
    fifth = {i for i in ids if keep_fraction_selects(i, 0.2)}
    assert abs(len(tenth) - 2000) < 200 and abs(len(fifth) - 4000) < 300
    assert tenth <= fifth  # raising the fraction only adds frames
    assert tenth == {i for i in ids if keep_fraction_selects(i, 0.1)}
    assert not any(keep_fraction_selects(i, 0.0) for i in ids[:100])
    assert all(keep_fraction_selects(i, 1.0) for i in ids[:100])


def test_image_paths_are_safe_and_distinct() -> None:
    a = image_relpath("cam/0:../1", "fail", T0)
    b = image_relpath("cam_0_.._1", "fail", T0)
    assert a != b and ".." not in a.split("/") and a.startswith("2023-11-14/fail/")


# ---------------------------------------------------------------------- quota
def test_tiny_quota_is_never_exceeded_and_keeps_every_fail_image_it_can(tmp_path: Path) -> None:
    quota = int(jpeg_size(0) * 5.5)
    # one JPEG per frame, so the sizes above hold (annotated copies: test_annotated_*)
    cfg = make_cfg(tmp_path, images={"keep_pass_fraction": 1.0, "quota_bytes": quota,
                                     "annotate_fails": False})
    disk = FakeDisk(cfg.images.dir, capacity=10**12)
    verdicts: list[Verdict] = ["fail" if i % 3 == 0 else "pass" for i in range(60)]
    with Store(cfg, clock=counter_clock(), free_disk_bytes=disk) as store:
        for i, verdict in enumerate(verdicts):
            store.submit(rec(i, verdict, n_defects=int(verdict == "fail"), image=noisy(i)))
            if i % 10 == 9:
                store.flush()  # let the encoder keep up, so no frame is skipped for backlog
        store.flush()
        stats = store.stats()
        failures = store.recent_failures(limit=3)
    assert disk.max_used <= quota and dir_bytes(cfg.images.dir) <= quota
    assert stats.images_bytes == dir_bytes(cfg.images.dir)
    assert stats.images_skipped_fail == 0
    assert_ledger_matches_disk(cfg)
    rows = ledger(cfg)
    # fail images only went when no pass image was left to delete
    for fid, _, _, row_verdict, _, deleted_at, *_ in rows:
        if row_verdict == "fail" and deleted_at is not None:
            alive_pass = [
                r for r in rows
                if r[3] == "pass" and float(str(r[4])) < float(str(deleted_at))
                and (r[5] is None or float(str(r[5])) > float(str(deleted_at)))
            ]
            assert not alive_pass, f"{fid} deleted while pass images were kept"
    assert {r[6] for r in rows if r[5] is not None} == {"quota"}
    assert any(r[3] == "pass" and r[5] is not None for r in rows)  # pass images went first
    # what is kept at the end: the newest fail images, as many as fit
    live = [r for r in rows if r[5] is None]
    fails = [i for i, v in enumerate(verdicts) if v == "fail"]
    kept = sorted(int(str(r[0]).split(":")[1]) for r in live)
    assert kept == fails[-len(kept):]
    assert sum(jpeg_size(i) for i in fails[-len(kept) - 1:]) > quota
    assert all(r[3] == "fail" for r in live)
    assert stats.images_deleted == sum(1 for r in rows if r[5] is not None)
    # the panel gets the kept JPEG of the newest failure
    image_path = failures[0]["image_path"]
    assert image_path is not None
    image = cv2.imread(image_path)
    assert image is not None and image.shape == SHAPE


def test_free_disk_floor_with_injected_disk_usage(tmp_path: Path) -> None:
    size = jpeg_size(0)
    capacity = 10 * 1024 * 1024
    floor = capacity - int(size * 3.5)
    cfg = make_cfg(
        tmp_path,
        images={"keep_pass_fraction": 1.0, "quota_bytes": 10**9, "min_free_disk_bytes": floor,
                "annotate_fails": False},  # sized in single JPEGs
    )
    disk = FakeDisk(cfg.images.dir, capacity=capacity)
    with Store(cfg, clock=counter_clock(), free_disk_bytes=disk) as store:
        for i in range(10):
            store.submit(rec(i, "pass", image=noisy(i)))
            store.flush()
        assert 1 <= store.image_usage()["live_count"] <= 3
        for i in range(10, 14):
            store.submit(rec(i, "fail", n_defects=1, image=noisy(i)))
            store.flush()
        usage = store.image_usage()
        assert usage["live_fail_count"] == usage["live_count"] >= 2
        assert set(usage["deleted_by_reason"]) == {"disk_floor"}
        kept_before = live_files(cfg.images.dir)
        # someone else fills the disk: nothing fits any more, even after deleting ours
        disk.capacity = floor
        store.submit(rec(14, "fail", n_defects=1, image=noisy(14)))
        store.flush()
        assert store.stats().images_skipped_fail == 1
        skipped = store.events(kinds=["image_skipped"])
        alarms = [e["data"]["alarm"] for e in store.events(kinds=["alarm_raised"])]
    assert disk.min_free is not None and disk.min_free >= 0
    assert live_files(cfg.images.dir) == kept_before  # no pointless deletions
    assert skipped[0]["data"]["why"] == "disk_floor" and skipped[0]["severity"] == "warning"
    assert alarms == ["disk_low"]
    assert_ledger_matches_disk(cfg)


def test_full_encoder_queue_skips_and_reports(tmp_path: Path) -> None:
    cfg = make_cfg(
        tmp_path,
        images={"keep_pass_fraction": 1.0, "queue_max_images": 1, "fail_offer_timeout_ms": 0},
    )
    store = Store(cfg)  # not started: the encoder does not drain the queue yet
    store.submit(rec(1, "fail", n_defects=1, image=noisy(1)))
    store.submit(rec(2, "fail", n_defects=1, image=noisy(2)))
    store.submit(rec(3, "pass", image=noisy(3)))
    store.start()
    store.flush()
    stats = store.stats()
    assert (stats.images_kept, stats.images_skipped_fail, stats.images_skipped_pass) == (1, 1, 1)
    assert [e["data"]["first_frame_id"] for e in store.events(kinds=["image_skipped"])] == ["s1:2"]
    assert store.inspection_count() == 3  # the records themselves are never dropped
    store.stop()


# ---------------------------------------------------------------------- restart
def test_restart_reconciles_directory_and_enforces_a_smaller_quota(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, images={"keep_pass_fraction": 1.0, "quota_bytes": 10**9})
    with Store(cfg, clock=counter_clock()) as store:
        order: list[Verdict] = ["pass", "fail", "pass", "fail", "fail"]
        for i, verdict in enumerate(order):
            store.submit(rec(i, verdict, image=noisy(i), n_defects=int(verdict == "fail")))
            store.flush()
    rows = ledger(cfg)
    assert len(rows) == 5
    (cfg.images.dir / str(rows[4][1])).unlink()  # lost file (e.g. power loss)
    orphan = cfg.images.dir / "2020-01-01" / "fail" / "orphan.jpg"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x" * 10)
    (cfg.images.dir / (str(rows[0][1]) + ".tmp")).write_bytes(b"partial")
    torn = cfg.images.dir / str(rows[1][1])  # an atomic write's temp file, left by a crash
    torn.with_name(f".{torn.name}.k3j9x.tmp").write_bytes(b"partial")
    # the quota now fits one image: pass images go first, then the oldest fail
    quota = max(int(str(r[2])) + int(str(r[8])) for r in rows) + 1  # with annotated copy
    images = cfg.images.model_copy(update={"quota_bytes": quota})
    smaller = cfg.model_copy(update={"images": images})
    with Store(smaller, clock=counter_clock()) as store:
        store.flush()
        usage = store.image_usage()
    assert not orphan.exists() and not orphan.parent.exists()
    assert not list(cfg.images.dir.rglob("*.tmp"))
    reasons = {str(r[0]): r[6] for r in ledger(cfg)}
    assert reasons == {"s1:0": "quota", "s1:1": "quota", "s1:2": "quota", "s1:3": None,
                       "s1:4": "missing"}
    assert usage["live_count"] == 1 and usage["live_bytes"] <= quota
    assert_ledger_matches_disk(cfg)
