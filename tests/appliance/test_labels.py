"""Operator labels: validation against the frame, pinned images (never evicted while a
label waits for export, pins survive a restart), the ground-truth rule, and the YOLO
export (read back with models/yolo_dataset.py), atomic and marked only once written."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.cli import main as appliance_main
from appliance.config import load_config
from appliance.errors import BadLabel, LabelError, UnknownFrame
from appliance.labels import Label, LabelBook, ground_truth
from appliance.labels_export import export_labels, yolo_row
from appliance.store import Store, StoreConfig
from models.yolo_dataset import load_data_yaml
from tests.appliance.test_store_images import jpeg_size, noisy
from tests.appliance.test_store_writer import CLASSES, make_cfg, rec

W, H = 64, 48  # the test images (noisy)


def fill(store: Store, n_fail: int = 3, n_pass: int = 0) -> None:
    """Fail frames s1:0.. with 2 defects each ((0,5,8,9) scratch, (10,5,18,9) pit), then
    pass frames."""
    for i in range(n_fail):
        store.submit(rec(i, "fail", n_defects=2, image=noisy(i)))
    for i in range(n_fail, n_fail + n_pass):
        store.submit(rec(i, "pass", image=noisy(i)))
    store.flush()


@pytest.fixture
def cfg(tmp_path: Path) -> StoreConfig:
    return make_cfg(tmp_path, images={"keep_pass_fraction": 1.0, "annotate_fails": False})


@pytest.fixture
def store(cfg: StoreConfig) -> Iterator[Store]:
    s = Store(cfg)
    s.start()
    fill(s)
    yield s
    s.stop()


def test_add_confirm_reject_missed(store: Store) -> None:
    book = LabelBook(store, CLASSES)
    a = book.add("s1:0", "confirm", "anna", defect_index=0)
    b = book.add("s1:0", "reject", "anna", defect_index=1)
    c = book.add("s1:0", "missed", "ben", class_name="crack", box_xyxy=(20, 10, 40.5, 30))
    assert (a.kind, a.defect_index, a.model_version, a.preprocess_hash) == \
        ("confirm", 0, "3", "abc123")
    assert c.box_xyxy == (20.0, 10.0, 40.5, 30.0) and c.class_name == "crack"
    assert c.defect_index is None and c.author == "ben" and c.exported_at_s is None
    assert book.for_frame("s1:0") == [a, b, c]
    assert book.for_frame("s1:1") == []
    assert [x.id for x in book.pending_export()] == [a.id, b.id, c.id]
    assert store.image_pinned("s1:0") and not store.image_pinned("s1:1")


@pytest.mark.parametrize(
    ("kwargs", "error", "says"),
    [
        ({"frame_id": "s1:99", "kind": "confirm", "defect_index": 0}, UnknownFrame,
         "no inspection with frame id 's1:99'"),
        ({"kind": "approve", "defect_index": 0}, BadLabel, "unknown label kind 'approve'"),
        ({"kind": "confirm"}, BadLabel, "needs defect_index"),
        ({"kind": "confirm", "defect_index": 2}, BadLabel, "has 2 detection(s)"),
        ({"kind": "reject", "defect_index": -1}, BadLabel, "no defect_index -1"),
        ({"kind": "confirm", "defect_index": 0, "class_name": "pit"}, BadLabel,
         "for missed defects only"),
        ({"kind": "missed", "class_name": "dent", "box_xyxy": (1, 1, 5, 5)}, BadLabel,
         "'dent' is not one of the model's classes: scratch, pit, crack, stain"),
        ({"kind": "missed", "class_name": "pit"}, BadLabel, "needs box_xyxy"),
        ({"kind": "missed", "class_name": "pit", "box_xyxy": (1, 1, 5)}, BadLabel,
         "needs box_xyxy"),
        ({"kind": "missed", "class_name": "pit", "box_xyxy": (5, 1, 5, 9)}, BadLabel,
         "is empty"),
        ({"kind": "missed", "class_name": "pit", "box_xyxy": (1, 1, 65, 9)}, BadLabel,
         "outside the 64x48 image"),
        ({"kind": "missed", "class_name": "pit", "box_xyxy": (-1, 1, 5, 9)}, BadLabel,
         "outside"),
        ({"kind": "missed", "class_name": "pit", "box_xyxy": (1, 1, float("nan"), 9)},
         BadLabel, "finite"),
        ({"kind": "missed", "class_name": "pit", "box_xyxy": ("a", 1, 2, 9)}, BadLabel,
         "four numbers"),
        ({"kind": "missed", "class_name": "pit", "box_xyxy": (1, 1, 5, 9),
          "defect_index": 0}, BadLabel, "not defect_index"),
        ({"kind": "confirm", "defect_index": 0, "author": ""}, BadLabel, "author"),
    ],
)
def test_bad_labels_are_refused_and_nothing_is_written(
        store: Store, kwargs: dict[str, object], error: type[Exception], says: str) -> None:
    book = LabelBook(store, CLASSES)
    args: dict[str, object] = {"frame_id": "s1:0", "author": "anna", **kwargs}
    with pytest.raises(error) as info:
        book.add(**args)  # type: ignore[arg-type]
    assert says in str(info.value)
    assert book.pending_export() == [] and not store.image_pinned("s1:0")


def test_classes_may_follow_the_model_or_be_open(store: Store) -> None:
    current = ["pit"]
    book = LabelBook(store, lambda: current)
    with pytest.raises(BadLabel, match="not one of the model's classes: pit"):
        book.add("s1:0", "missed", "anna", class_name="crack", box_xyxy=(1, 1, 5, 5))
    current.append("crack")  # a hot swap to a model that knows cracks
    assert book.add("s1:0", "missed", "anna", class_name="crack",
                    box_xyxy=(1, 1, 5, 5)).class_name == "crack"
    open_book = LabelBook(store)
    assert open_book.classes is None
    assert open_book.add("s1:1", "missed", "anna", class_name="dent",
                         box_xyxy=(1, 1, 5, 5)).class_name == "dent"
    with pytest.raises(BadLabel, match="needs class_name"):
        open_book.add("s1:1", "missed", "anna", class_name=" ", box_xyxy=(1, 1, 5, 5))
    # the export skips the frame whose class its bundle lacks; its label stays pending
    result = export_labels(store, store.path.parent / "out", CLASSES)
    assert result.frames == 1 and "dent" in result.skipped["s1:1"]
    assert [lb.frame_id for lb in open_book.pending_export()] == ["s1:1"]


def test_a_frame_without_a_kept_image_cannot_be_labelled(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, images={"keep_pass_fraction": 0.0})
    with Store(cfg) as store:
        store.submit(rec(0, "fail", n_defects=1))  # no image offered
        store.flush()
        with pytest.raises(BadLabel, match="has no kept image"):
            LabelBook(store, CLASSES).add("s1:0", "confirm", "anna", defect_index=0)


# ---------------------------------------------------------------------- pinning
def test_a_labelled_image_is_never_evicted_until_exported(tmp_path: Path) -> None:
    quota = int(jpeg_size(0) * 4.5)  # about four images
    cfg = make_cfg(tmp_path, images={"keep_pass_fraction": 1.0, "quota_bytes": quota,
                                     "annotate_fails": False})
    with Store(cfg) as store:
        for i in range(3):
            store.submit(rec(i, "pass", image=noisy(i)))
        store.flush()
        book = LabelBook(store, CLASSES)
        book.add("s1:0", "missed", "anna", class_name="pit", box_xyxy=(1, 1, 9, 9))
        for i in range(3, 30):  # far more than the quota holds
            store.submit(rec(i, "pass", image=noisy(i)))
            store.flush()
        assert book.frame("s1:0").image_path is not None  # the oldest, still kept
        assert book.frame("s1:1").image_path is None  # its neighbour went
        assert store.stats().images_bytes <= quota
    # pins come back from the labels table at the next start, before the quota is enforced
    small = cfg.model_copy(update={"images": cfg.images.model_copy(
        update={"quota_bytes": jpeg_size(0) + 10})})
    with Store(small) as store:
        assert store.image_pinned("s1:0")
        assert LabelBook(store, CLASSES).frame("s1:0").image_path is not None
        export_labels(store, tmp_path / "export", CLASSES)
        assert not store.image_pinned("s1:0")
        store.submit(rec(40, "pass", image=noisy(40)))
        store.flush()
        assert LabelBook(store, CLASSES).frame("s1:0").image_path is None  # evicted now


def test_pins_are_counted_per_label(store: Store) -> None:
    book = LabelBook(store, CLASSES)
    book.add("s1:1", "confirm", "anna", defect_index=0)
    book.add("s1:1", "confirm", "anna", defect_index=1)
    store.unpin_images(["s1:1"])
    assert store.image_pinned("s1:1")
    store.unpin_images(["s1:1", "s1:1", "never-pinned"])
    assert not store.image_pinned("s1:1")


# ---------------------------------------------------------------------- ground truth
def lab(i: int, kind: str, index: int | None = None, cls: str | None = None,
        box: tuple[float, float, float, float] | None = None) -> Label:
    return Label(i, "f", kind, "anna", 0.0, index, cls, box, "3", "h", None)  # type: ignore[arg-type]


D = [("scratch", (0.0, 0.0, 1.0, 1.0)), ("pit", (2.0, 2.0, 3.0, 3.0))]
M = ("crack", (4.0, 4.0, 5.0, 5.0))


@pytest.mark.parametrize(
    ("labels", "keep_unreviewed", "expected"),
    [
        ([lab(1, "confirm", 0)], True, D),
        ([lab(1, "confirm", 0)], False, D[:1]),
        ([lab(1, "reject", 1)], True, D[:1]),
        ([lab(1, "reject", 0), lab(2, "reject", 1)], True, []),
        ([lab(1, "reject", 0), lab(2, "confirm", 0)], False, D[:1]),  # the latest wins
        ([lab(1, "confirm", 0), lab(2, "reject", 0)], True, D[1:]),
        ([lab(1, "missed", cls=M[0], box=M[1])], True, [*D, M]),
        ([lab(1, "missed", cls=M[0], box=M[1])], False, [M]),
    ],
)
def test_ground_truth_rule(labels: list[Label], keep_unreviewed: bool,
                           expected: list[tuple[str, tuple[float, ...]]]) -> None:
    assert ground_truth(D, labels, keep_unreviewed=keep_unreviewed) == expected


def test_yolo_row_is_normalised_xywh() -> None:
    assert yolo_row(2, (16, 12, 48, 36), 64, 48) == "2 0.500000 0.500000 0.500000 0.500000"


# ---------------------------------------------------------------------- export
def test_export_is_a_yolo_dataset_and_marks_the_labels(store: Store, tmp_path: Path) -> None:
    book = LabelBook(store, CLASSES)
    book.add("s1:0", "confirm", "anna", defect_index=0)
    book.add("s1:0", "reject", "anna", defect_index=1)
    book.add("s1:0", "missed", "anna", class_name="crack", box_xyxy=(32, 24, 64, 48))
    book.add("s1:2", "reject", "ben", defect_index=0)
    book.add("s1:2", "reject", "ben", defect_index=1)
    out = tmp_path / "labels-1"
    result = export_labels(store, out, CLASSES)
    assert (result.frames, result.boxes, result.labels_marked, result.skipped) == \
        (2, 2, 5, {})
    dataset = load_data_yaml(out / "data.yaml")
    assert dataset.names == list(CLASSES)
    images = dataset.images("train")
    assert [p.name for p in images] == ["s1_0.jpg", "s1_2.jpg"]
    rows = dataset.labels_for(images[0])
    np.testing.assert_allclose(rows, [[0, 4 / W, 7 / H, 8 / W, 4 / H],
                                      [2, 0.75, 0.75, 0.5, 0.5]], atol=1e-6)
    assert dataset.labels_for(images[1]).shape == (0, 5)  # all rejected: a negative
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["frame_id"] for f in manifest["frames"]] == ["s1:0", "s1:2"]
    assert manifest["frames"][0]["model_version"] == "3"
    assert manifest["frames"][0]["preprocess_hash"] == "abc123"
    assert book.pending_export() == []
    assert not store.image_pinned("s1:0") and not store.image_pinned("s1:2")
    with pytest.raises(LabelError, match="no labels to export"):
        export_labels(store, tmp_path / "labels-2", CLASSES)
    assert not (tmp_path / "labels-2").exists()
    # --all exports them again (nothing to mark); a later label exports its frame alone
    again = export_labels(store, tmp_path / "labels-3", CLASSES, include_all=True)
    assert (again.frames, again.labels_marked) == (2, 0)
    book.add("s1:1", "confirm", "anna", defect_index=1)
    later = export_labels(store, tmp_path / "labels-4", CLASSES, keep_unreviewed=False)
    assert (later.frames, later.boxes) == (1, 1)


def test_export_refuses_a_used_folder_and_leaves_nothing_half_written(
        store: Store, tmp_path: Path) -> None:
    LabelBook(store, CLASSES).add("s1:0", "confirm", "anna", defect_index=0)
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("mine")
    with pytest.raises(LabelError, match="not an empty folder"):
        export_labels(store, used, CLASSES)
    assert [p.name for p in used.iterdir()] == ["x"]
    # a class the export's class list lacks: the frame is skipped, its label stays pending
    with pytest.raises(LabelError, match="no labelled frame could be exported"):
        export_labels(store, tmp_path / "new", ["pit"])
    assert not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(LabelBook(store, CLASSES).pending_export()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_labels(store, empty, CLASSES).frames == 1  # an empty folder is fine


def test_cli_export_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(None, {"data_dir": str(tmp_path / "data"),
                             "store": {"images": {"keep_pass_fraction": 1.0}}})
    with Store(cfg.store) as store:
        fill(store, n_fail=2)
        LabelBook(store, CLASSES).add("s1:1", "confirm", "anna", defect_index=1)
    data = ["--data-dir", str(tmp_path / "data")]
    assert appliance_main(["export-labels", str(tmp_path / "out"), "--json", *data]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["frames"], result["boxes"], result["labels_marked"]) == (1, 2, 1)
    assert load_data_yaml(tmp_path / "out" / "data.yaml").names == list(CLASSES)
    assert appliance_main(["export-labels", str(tmp_path / "out2"), *data]) == 1
    assert "no labels to export" in capsys.readouterr().err
    assert appliance_main(["export-labels", str(tmp_path / "out2"), "--all", "--since",
                           "1h", *data]) == 0  # the label was made just now
    assert "exported 1 frames (2 boxes)" in capsys.readouterr().out
    assert appliance_main(["export-labels", str(tmp_path / "out2"), "--all", *data]) == 1
    assert "not an empty folder" in capsys.readouterr().err


def test_labels_table_refuses_inconsistent_rows(store: Store) -> None:
    conn = sqlite3.connect(str(store.path))
    try:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO labels (frame_id, kind, author, created_at) VALUES"
                         " ('s1:0', 'missed', 'anna', 0)")
    finally:
        conn.close()
