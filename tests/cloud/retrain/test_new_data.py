"""The new data a retraining is judged on: the images of a dataset version that none
of its parent versions held, as a val-only YOLO folder (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from cloud.datasets.index import DatasetIndex
from cloud.retrain.data import IndexSource, val_subset
from models.yolo_dataset import load_data_yaml
from tests.cloud.dataset_helpers import index, linesim_dataset, source_yaml

__all__ = ["index", "source_yaml"]  # fixtures


def test_new_images_are_those_no_parent_version_held(index: DatasetIndex, source_yaml: Path,
                                                     tmp_path: Path) -> None:
    src = IndexSource(index)
    index.import_yolo(source_yaml, "parts")
    assert src.new_images("parts@1") is None  # an import: no parent versions
    index.union(["parts@1"], "line-1-parts")
    assert src.new_images("line-1-parts@1") == frozenset()  # a copy adds nothing
    more = index.import_yolo(linesim_dataset(tmp_path / "more", seed=5, n_train=8, n_val=8),
                             "samples")
    # as an inbox acceptance makes it: the line's data plus new samples, whose only
    # parent version is the line's data
    base = index.items("line-1-parts@1")
    grown = index.create_version(
        "line-1-parts", index.get("line-1-parts@1").classes, [*base, *index.items(more.ref)],
        [], parents=["line-1-parts@1"], source="inbox plant1/line-1: 16 samples",
        split_rule=index.hash_rule)
    new = src.new_images(grown.ref)
    held = {i.image_sha256 for i in base}
    assert new == {i.image_sha256 for i in index.items(more.ref)} - held
    assert new and not new & held
    # a union with the samples' own version: nothing is new relative to both parents
    both = index.union(["line-1-parts@1", more.ref], "both")
    assert src.new_images(both.ref) == frozenset()

def test_val_subset_keeps_only_the_new_val_images_with_their_labels(
        index: DatasetIndex, source_yaml: Path, tmp_path: Path) -> None:
    index.import_yolo(source_yaml, "parts")
    data_yaml = index.materialize("parts@1", tmp_path / "m")
    val = load_data_yaml(data_yaml).images("val")
    keep = frozenset(p.stem for p in val[:2]) | {"0" * 64}  # and one not in val
    out, count = val_subset(data_yaml, keep, tmp_path / "new")
    assert count == 2
    subset = load_data_yaml(out)
    assert sorted(p.name for p in subset.images("val")) == sorted(p.name for p in val[:2])
    assert subset.names == load_data_yaml(data_yaml).names
    whole = load_data_yaml(data_yaml)
    for image in subset.images("val"):
        original = whole.root / "images" / "val" / image.name
        assert subset.labels_for(image).tolist() == whole.labels_for(original).tolist()
    assert val_subset(data_yaml, frozenset({"f" * 64}), tmp_path / "none")[1] == 0
