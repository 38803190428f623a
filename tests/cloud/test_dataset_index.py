"""DatasetIndex on both database back ends, with small linesim datasets: import,
versions and refs, union, stable split, materialise/holdout, refusal of bad input."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from cloud.datasets.content import split_for_hash
from cloud.datasets.errors import DatasetError, DatasetRejected, UnknownDataset
from cloud.datasets.index import DatasetIndex
from models.yolo_dataset import label_path_for, load_data_yaml
from tests.cloud.dataset_helpers import (
    CLASSES,
    copy_dataset,
    index,
    linesim_dataset,
    source_yaml,
)

__all__ = ["index", "source_yaml"]  # fixtures


def _objects(idx: DatasetIndex) -> list[Path]:
    return [p for _, p in idx.objects.all_objects()]


def test_import_makes_an_immutable_fingerprinted_version(index, source_yaml):
    v = index.import_yolo(source_yaml, "parts")
    assert (v.name, v.number, v.ref) == ("parts", 1, "parts@1")
    assert v.classes == CLASSES
    assert len(v.fingerprint) == 64
    assert v.images == 20 and v.counts.images["val"] > 0
    assert v.split_rule == "hash:0.25"
    assert sum(v.counts.boxes["train"].values()) + sum(v.counts.boxes["val"].values()) == sum(
        len(p.read_text().splitlines())
        for p in (source_yaml.parent / "labels").rglob("*.txt"))
    # the same content again is the same version, under the name it has
    assert index.import_yolo(source_yaml, "parts") == v
    # the dataset's own split is another content: version 2
    kept = index.import_yolo(source_yaml, "parts", split="keep")
    assert (kept.number, kept.split_rule, kept.counts.images) == (
        2, "kept", {"train": 16, "val": 4})
    assert index.get("parts") == kept
    assert index.get("parts@1") == v
    assert index.get(f"parts@{v.fingerprint[:8]}") == v
    assert [x.ref for x in index.list()] == ["parts@1", "parts@2"]
    # one object per image, content-addressed and read-only
    objects = _objects(index)
    assert len(objects) == 20
    for path in objects:
        assert path.parent.name == path.name[:2]
        assert not os.access(path, os.W_OK) or os.geteuid() == 0
        assert (path.stat().st_mode & 0o222) == 0


def test_unknown_refs_say_what_exists(index, source_yaml):
    with pytest.raises(UnknownDataset, match="no dataset named 'parts'"):
        index.get("parts")
    index.import_yolo(source_yaml, "parts")
    with pytest.raises(UnknownDataset, match=r"no version parts@7 \(versions of parts: 1\)"):
        index.get("parts@7")
    with pytest.raises(UnknownDataset, match="no version parts@ffff"):
        index.get("parts@ffff")


def test_split_by_hash_is_stable_across_versions(index, source_yaml, tmp_path):
    first = index.import_yolo(source_yaml, "parts")
    bigger = linesim_dataset(tmp_path / "more", seed=5, n_train=8, n_val=0)
    merged = copy_dataset(source_yaml, tmp_path / "merged")
    for sub in ("images", "labels"):
        for f in (bigger.parent / sub / "train").iterdir():
            shutil.copy(f, merged.parent / sub / "train" / f"extra_{f.name}")
    second = index.import_yolo(merged, "parts")
    assert second.number == 2 and second.images == first.images + 8
    old = {i.image_sha256: i.split for i in index.items("parts@1")}
    new = {i.image_sha256: i.split for i in index.items("parts@2")}
    assert all(new[h] == s for h, s in old.items())
    assert all(s == split_for_hash(h, 0.25) for h, s in new.items())


def test_union_maps_classes_by_name(index, source_yaml, tmp_path):
    a = index.import_yolo(source_yaml, "a")
    other = linesim_dataset(tmp_path / "b", seed=9, n_train=6, n_val=2)
    # the same classes in another order: labels are remapped by name
    order = ["stain", "crack", "pit", "scratch"]
    old_to_new = {CLASSES.index(n): order.index(n) for n in CLASSES}
    for label in (other.parent / "labels").rglob("*.txt"):
        rows = [line.split() for line in label.read_text().splitlines()]
        label.write_text("".join(f"{old_to_new[int(r[0])]} {' '.join(r[1:])}\n" for r in rows))
    doc = yaml.safe_load(other.read_text())
    doc["names"] = dict(enumerate(order))
    other.write_text(yaml.safe_dump(doc))
    b = index.import_yolo(other, "b")
    assert b.classes == order
    u = index.union(["a@1", "b"], "ab")
    assert (u.ref, u.parents, u.classes) == ("ab@1", ["a@1", "b@1"], CLASSES)
    assert u.images == a.images + b.images
    for split in ("train", "val"):
        for name in CLASSES:
            assert u.counts.boxes[split][name] == (a.counts.boxes[split][name]
                                                   + b.counts.boxes[split][name])
    # union of versions already in it: same content, same version
    assert index.union(["ab@1", "a@1"], "ab") == u


def test_union_refuses_conflicts(index, source_yaml, tmp_path):
    index.import_yolo(source_yaml, "a")
    relabelled = copy_dataset(source_yaml, tmp_path / "relabelled")
    label = sorted((relabelled.parent / "labels" / "train").iterdir())[0]
    label.write_text("0 0.500000 0.500000 0.200000 0.200000\n")
    index.import_yolo(relabelled, "b")
    with pytest.raises(DatasetRejected, match="different labels in a@1 and b@1"):
        index.union(["a", "b"], "ab")
    dent = linesim_dataset(tmp_path / "dent", seed=3, n_train=4, n_val=1)
    doc = yaml.safe_load(dent.read_text())
    doc["names"] = {0: "scratch", 1: "dent", 2: "crack", 3: "stain"}
    dent.write_text(yaml.safe_dump(doc))
    index.import_yolo(dent, "d")
    with pytest.raises(DatasetRejected, match=r"d@1: unknown class.*dent"):
        index.union(["a", "d"], "ad")
    with pytest.raises(DatasetRejected, match=r"unknown class.*dent"):
        index.import_yolo(dent, "a")  # a new version of `a` must keep a's classes
    assert [v.ref for v in index.list()] == ["a@1", "b@1", "d@1"]


def test_materialize_writes_a_yolo_folder_that_reads_back(index, source_yaml, tmp_path):
    v = index.import_yolo(source_yaml, "parts")
    data_yaml = index.materialize("parts@1", tmp_path / "train-me")
    assert data_yaml == (tmp_path / "train-me" / "data.yaml")
    back = load_data_yaml(data_yaml)
    assert back.names == CLASSES
    items = {i.image_sha256: i for i in index.items("parts@1")}
    for split in ("train", "val"):
        images = back.images(split)
        assert len(images) == v.counts.images[split]
        for image in images:
            item = items[image.stem]
            assert item.split == split
            boxes = back.labels_for(image)
            assert len(boxes) == len(item.labels.splitlines())
            assert label_path_for(image).is_file()
            assert image.stat().st_nlink >= 2  # hard-linked from the store
    # asking again for the same version is a no-op; another version is refused
    assert index.materialize("parts@1", tmp_path / "train-me") == data_yaml
    index.import_yolo(source_yaml, "parts", split="keep")
    with pytest.raises(DatasetError, match="not empty"):
        index.materialize("parts@2", tmp_path / "train-me")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_holdout_is_the_val_split_alone(index, source_yaml, tmp_path):
    v = index.import_yolo(source_yaml, "parts")
    data_yaml = index.holdout("parts")
    assert data_yaml.parent == index.root / "holdout" / v.fingerprint
    back = load_data_yaml(data_yaml)
    assert len(back.images("val")) == v.counts.images["val"]
    assert back.images("train") == back.images("val")
    assert not (data_yaml.parent / "images" / "train").exists()
    assert index.holdout("parts", tmp_path / "h") == tmp_path / "h" / "data.yaml"


def _break(root: Path, how: str) -> str:
    """Damage the dataset at `root` (a copy); the fragment the error must contain."""
    images = sorted((root / "images" / "train").iterdir())
    label = label_path_for(images[3])
    if how == "truncated_png":
        data = images[2].read_bytes()
        images[2].write_bytes(data[: len(data) // 2])
        return f"{images[2]}: truncated png"
    if how == "not_an_image":
        images[2].write_bytes(b"hello, not a picture")
        return f"{images[2]}: not an image"
    if how == "empty_image":
        images[2].write_bytes(b"")
        return f"{images[2]}: empty file"
    if how == "coords_over_1":
        label.write_text("0 1.5 0.5 0.1 0.1\n")
        return f"{label}:1: coordinates must be normalised"
    if how == "coords_slightly_over_1":
        label.write_text("0 0.5 0.5 1.005 0.1\n")
        return rf"{label}: coordinates must lie in \[0, 1\]"
    if how == "box_outside":
        label.write_text("0 0.98 0.5 0.1 0.1\n")
        return f"{label}: box reaches outside the image"
    if how == "class_out_of_range":
        label.write_text("0 0.5 0.5 0.1 0.1\n4 0.5 0.5 0.1 0.1\n")
        return f"{label}:2: class 4 is not one of 0..3"
    if how == "malformed_line":
        label.write_text("0 0.5 0.5 0.1\n")
        return f"{label}:1: expected 'class cx cy w h'"
    if how == "not_a_number":
        label.write_text("0 0.5 0.5 0.1 wide\n")
        return f"{label}:1: not a number"
    if how == "duplicate_other_labels":
        twin = images[0].with_name("twin.png")
        shutil.copy(images[0], twin)
        label_path_for(twin).write_text("1 0.5 0.5 0.3 0.3\n")
        return "the same image as .* with different labels"
    if how == "unknown_split_path":
        (root / "data.yaml").write_text((root / "data.yaml").read_text()
                                        .replace("val: images/val", "val: images/nowhere"))
        return "split 'val'.*does not exist"
    if how == "no_names":
        doc = yaml.safe_load((root / "data.yaml").read_text())
        del doc["names"]
        (root / "data.yaml").write_text(yaml.safe_dump(doc))
        return "'names' is missing"
    raise AssertionError(how)


BAD_INPUTS = ["truncated_png", "not_an_image", "empty_image", "coords_over_1",
              "coords_slightly_over_1", "box_outside", "class_out_of_range", "malformed_line",
              "not_a_number", "duplicate_other_labels", "unknown_split_path", "no_names"]


def _refused(idx: DatasetIndex, source_yaml: Path, tmp_path: Path, how: str) -> None:
    broken = copy_dataset(source_yaml, tmp_path / "broken")
    why = _break(broken.parent, how)
    with pytest.raises(DatasetRejected, match=why):
        idx.import_yolo(broken, "parts")
    assert idx.list() == []
    assert _objects(idx) == []


@pytest.mark.parametrize("how", BAD_INPUTS)
def test_bad_input_is_refused_with_the_file_and_nothing_is_written(tmp_path, source_yaml, how):
    # Everything is checked before the first object or row is written, so one back end
    # shows it; the next test runs a case on both.
    from cloud.db import DatabaseConfig, open_engine, upgrade

    config = DatabaseConfig(url=f"sqlite:///{tmp_path / 'cloud.db'}")
    engine = open_engine(config)
    upgrade(engine, config)
    try:
        _refused(DatasetIndex(engine, tmp_path / "datasets"), source_yaml, tmp_path, how)
    finally:
        engine.dispose()


def test_bad_input_is_refused_on_both_back_ends(index, source_yaml, tmp_path):
    _refused(index, source_yaml, tmp_path, "duplicate_other_labels")


def test_images_and_labels_folder_without_data_yaml(index, source_yaml, tmp_path):
    root = copy_dataset(source_yaml, tmp_path / "plain").parent
    (root / "data.yaml").unlink()
    with pytest.raises(DatasetRejected, match=r"no data.yaml and no classes.txt"):
        index.import_yolo(root, "plain")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    v = index.import_yolo(root, "plain", split="keep")
    assert v.counts.images == {"train": 16, "val": 4} and v.classes == CLASSES
    with pytest.raises(DatasetRejected, match=r"neither a data.yaml nor an images/ folder"):
        index.import_yolo(tmp_path, "plain")


def test_gc_removes_only_unreferenced_objects(index, source_yaml):
    index.import_yolo(source_yaml, "parts")
    orphan = index.objects.put_bytes(b"orphan", "ab" * 32, "png")
    assert index.gc(older_than_s=3600.0) == []  # too young: an import may be writing it
    assert index.gc(older_than_s=0.0) == [orphan]
    assert len(_objects(index)) == 20


def test_conflicting_duplicates_can_be_left_out_on_request(index, source_yaml, tmp_path):
    broken = copy_dataset(source_yaml, tmp_path / "dupes")
    _break(broken.parent, "duplicate_other_labels")
    v = index.import_yolo(broken, "parts", drop_conflicts=True)
    assert v.images == 19  # both copies of the image are left out
    assert "left out 2 conflicting duplicate file(s)" in v.source and "twin.png" in v.source


def test_concurrent_writers_get_distinct_numbers(index, tmp_path):
    """Two writers recording versions of one name at once (PostgreSQL: both may read the
    same next number; the loser's unique-constraint failure is retried)."""
    import threading

    sources = [linesim_dataset(tmp_path / f"s{i}", seed=20 + i, n_train=4, n_val=1)
               for i in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(sources))

    def work(path: Path) -> None:
        try:
            barrier.wait(timeout=30)
            index.import_yolo(path, "racing")
        except BaseException as e:  # handed to the test thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(p,)) for p in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert sorted(v.number for v in index.list("racing")) == [1, 2, 3, 4]
