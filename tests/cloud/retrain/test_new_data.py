"""The new data a retraining is judged on: the val images of a dataset version that
none of its parent versions held, as a holdout folder (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from cloud.datasets.index import DatasetIndex
from cloud.retrain.data import IndexSource
from models.yolo_dataset import load_data_yaml
from tests.cloud.dataset_helpers import index, linesim_dataset, source_yaml

__all__ = ["index", "source_yaml"]  # fixtures


def test_the_new_holdout_holds_the_val_images_no_parent_version_held(
        index: DatasetIndex, source_yaml: Path, tmp_path: Path) -> None:
    src = IndexSource(index)
    index.import_yolo(source_yaml, "parts")
    assert src.new_holdout("parts@1", tmp_path / "a") is None  # an import: no parents
    index.union(["parts@1"], "line-1-parts")
    assert src.new_holdout("line-1-parts@1", tmp_path / "b") is None  # a copy adds nothing
    more = index.import_yolo(linesim_dataset(tmp_path / "more", seed=5, n_train=8, n_val=8),
                             "samples")
    # as an inbox acceptance makes it: the line's data plus new samples, whose only
    # parent version is the line's data
    base = index.items("line-1-parts@1")
    grown = index.create_version(
        "line-1-parts", index.get("line-1-parts@1").classes, [*base, *index.items(more.ref)],
        [], parents=["line-1-parts@1"], source="inbox plant1/line-1: 16 samples",
        split_rule=index.hash_rule)
    found = src.new_holdout(grown.ref, tmp_path / "new")
    assert found is not None
    data_yaml, count = found
    held = {i.image_sha256 for i in base}
    expected = {i.image_sha256: i for i in index.items(grown.ref)
                if i.split == "val" and i.image_sha256 not in held}
    assert count == len(expected) > 0
    new = load_data_yaml(data_yaml)
    assert {p.stem for p in new.images("val")} == set(expected)
    assert new.names == index.get(grown.ref).classes
    for image in new.images("val"):  # the version's own labels
        rows = [r.split() for r in expected[image.stem].labels.splitlines()]
        assert len(new.labels_for(image)) == len(rows)
    # the whole version's holdout is another folder: the subset is never taken for it
    whole = index.holdout(grown.ref, tmp_path / "whole")
    assert len(load_data_yaml(whole).images("val")) >= count
    # a union with the samples' own version: nothing is new relative to both parents
    both = index.union(["line-1-parts@1", more.ref], "both")
    assert src.new_holdout(both.ref, tmp_path / "c") is None
