"""The dataset index's pure core: references, label checks, fingerprint, stable split."""

from __future__ import annotations

import hashlib
import json

import pytest

from cloud.datasets.content import (
    DatasetRef,
    Item,
    canonical_labels,
    check_label_row,
    class_mapping,
    fingerprint,
    merge_items,
    parse_ref,
    remap_labels,
    split_for_hash,
)
from cloud.datasets.errors import BadReference, DatasetRejected


@pytest.mark.parametrize(("text", "expected"), [
    ("parts", DatasetRef("parts")),
    ("parts@3", DatasetRef("parts", number=3)),
    ("neu-det.v2@12", DatasetRef("neu-det.v2", number=12)),
    ("parts@9f2c", DatasetRef("parts", fingerprint_prefix="9f2c")),
    ("parts@" + "a" * 64, DatasetRef("parts", fingerprint_prefix="a" * 64)),
])
def test_refs_parse(text, expected):
    assert parse_ref(text) == expected
    assert str(parse_ref(text)) == text


@pytest.mark.parametrize(("text", "why"), [
    ("", "dataset name"),
    ("-parts", "dataset name"),
    ("a/b", "dataset name"),
    ("parts@0", "start at 1"),
    ("parts@abc", "at least 4"),
    ("parts@ABCDEF", "lowercase hex"),
    ("parts@1@2", "expected NAME"),
    ("x" * 65, "dataset name"),
])
def test_bad_refs_say_why(text, why):
    with pytest.raises(BadReference, match=why):
        parse_ref(text)


@pytest.mark.parametrize(("row", "why"), [
    ([4, 0.5, 0.5, 0.1, 0.1], "class 4 is not one of 0..3"),
    ([1.5, 0.5, 0.5, 0.1, 0.1], "class 1.5"),
    ([-1, 0.5, 0.5, 0.1, 0.1], "class -1"),
    ([0, 1.2, 0.5, 0.1, 0.1], r"must lie in \[0, 1\]"),
    ([0, 0.5, -0.1, 0.1, 0.1], r"must lie in \[0, 1\]"),
    ([0, 0.5, 0.5, 0.0, 0.1], "zero size"),
    ([0, 0.95, 0.5, 0.2, 0.1], "outside the image"),
    ([0, 0.5, 0.5, 0.1], "5 values|got 4"),
])
def test_label_rows_out_of_range_are_refused(row, why):
    with pytest.raises(DatasetRejected, match=why) as info:
        check_label_row(row, 4, "labels/train/a.txt")
    assert "labels/train/a.txt" in str(info.value)


def test_label_rows_within_range_pass_with_edge_rounding():
    assert check_label_row([2, 0.5, 0.5, 1.0, 1.0], 4, "x") == (2, 0.5, 0.5, 1.0, 1.0)
    assert check_label_row([0, 0.9505, 0.5, 0.1, 0.1], 4, "x")[0] == 0  # edge 1.0005


def test_canonical_labels_sort_round_and_deduplicate():
    rows = [(1, 0.5, 0.5, 0.25, 0.25), (0, 0.1234567, 0.2, 0.1, 0.1), (1, 0.5, 0.5, 0.25, 0.25)]
    assert canonical_labels(rows) == ("0 0.123457 0.200000 0.100000 0.100000\n"
                                      "1 0.500000 0.500000 0.250000 0.250000")
    assert canonical_labels([]) == ""


def _sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def test_fingerprint_depends_on_content_not_order():
    items = [Item(_sha(i), "png", "train", f"0 0.5 0.5 0.{i + 1}00000 0.100000")
             for i in range(5)]
    fp = fingerprint(["a", "b"], items)
    assert fingerprint(["a", "b"], list(reversed(items))) == fp
    assert fingerprint(["a", "b"], [Item(i.image_sha256, "jpg", i.split, i.labels)
                                    for i in items]) == fp  # the file type is no content
    assert fingerprint(["b", "a"], items) != fp
    assert fingerprint(["a", "b"], items[:4]) != fp
    moved = [*items[:4], Item(items[4].image_sha256, "png", "val", items[4].labels)]
    assert fingerprint(["a", "b"], moved) != fp
    relabelled = [*items[:4], Item(items[4].image_sha256, "png", "train", "")]
    assert fingerprint(["a", "b"], relabelled) != fp


def test_split_by_hash_is_stable_and_near_the_fraction():
    hashes = [_sha(i) for i in range(4000)]
    for fraction in (0.1, 0.2, 0.5):
        val = [h for h in hashes if split_for_hash(h, fraction) == "val"]
        assert abs(len(val) / len(hashes) - fraction) < 0.03
    # raising the fraction only moves frames from train to val
    small = {h for h in hashes if split_for_hash(h, 0.1) == "val"}
    large = {h for h in hashes if split_for_hash(h, 0.2) == "val"}
    assert small <= large
    assert all(split_for_hash(h, 0.2) == split_for_hash(h, 0.2) for h in hashes[:50])


def test_classes_map_by_name_and_unknown_classes_are_refused():
    assert class_mapping(["a", "b", "c"], ["c", "a"], "B@1") == [2, 0]
    with pytest.raises(DatasetRejected, match=r"B@1: unknown class.*dent"):
        class_mapping(["a", "b"], ["a", "dent"], "B@1")
    with pytest.raises(DatasetRejected, match="repeat"):
        class_mapping(["a", "b"], ["a", "a"], "B@1")
    assert remap_labels("0 0.5 0.5 0.1 0.1\n1 0.2 0.2 0.1 0.1", [2, 0]) == (
        "0 0.200000 0.200000 0.100000 0.100000\n2 0.500000 0.500000 0.100000 0.100000")


def test_merge_refuses_one_image_with_two_labels_or_splits():
    a = Item(_sha(1), "png", "train", "0 0.500000 0.500000 0.100000 0.100000")
    b = Item(_sha(2), "png", "val", "")
    assert len(merge_items([("A@1", [a, b]), ("B@1", [a])])) == 2
    with pytest.raises(DatasetRejected, match="different labels in A@1 and B@1"):
        merge_items([("A@1", [a]), ("B@1", [Item(a.image_sha256, "png", "train", "")])])
    with pytest.raises(DatasetRejected, match="in train in A@1 but in val in B@1"):
        merge_items([("A@1", [a]), ("B@1", [Item(a.image_sha256, "png", "val", a.labels)])])


def _sample(labels, predictions):
    from protocol.samples import SampleMeta

    return SampleMeta.model_validate_json(json.dumps({
        "schema": "lineguard.sample/1", "sample_id": "s", "frame_id": "f",
        "captured_at": "2025-03-14T09:00:00Z", "model": {"name": "m", "version": 1},
        "reason": "operator",
        "predictions": [{"class_name": c, "score": s, "box_xyxy": b} for c, s, b in predictions],
        "labels": [{"kind": k, "class_name": c, "box_xyxy": b} for k, c, b in labels]}))


PIT = (10.0, 10.0, 30.0, 30.0)
STAIN = (50.0, 50.0, 70.0, 60.0)
CRACK = (0.0, 0.0, 100.0, 10.0)


@pytest.mark.parametrize(("labels", "predictions", "options", "expected"), [
    # no operator labels: skipped, unless predictions are asked for
    ([], [("pit", 0.9, PIT)], {}, None),
    ([], [("pit", 0.9, PIT), ("stain", 0.3, STAIN)], {"include_predictions": True},
     ["pit", "stain"]),
    ([], [("pit", 0.9, PIT), ("stain", 0.3, STAIN)],
     {"include_predictions": True, "min_score": 0.5}, ["pit"]),
    # the panel's rule: confirmed (class may be corrected) + missed + unreviewed
    ([("confirm", "scratch", PIT), ("missed", "crack", CRACK)],
     [("pit", 0.9, PIT), ("stain", 0.6, STAIN)], {}, ["crack", "scratch", "stain"]),
    ([("reject", "pit", PIT)], [("pit", 0.9, PIT), ("stain", 0.6, STAIN)], {}, ["stain"]),
    ([("reject", "pit", PIT)], [("pit", 0.9, PIT)], {}, []),  # a negative example
    ([("confirm", "pit", PIT)], [("pit", 0.9, PIT), ("stain", 0.6, STAIN)],
     {"drop_unreviewed": True}, ["pit"]),
    # a label's box within rounding of the prediction's still reviews it
    ([("reject", "pit", (10.2, 10.0, 30.0, 30.1))], [("pit", 0.9, PIT)], {}, []),
])
def test_sample_labels_follow_the_panels_rule(labels, predictions, options, expected):
    from cloud.datasets.inbox import sample_rows

    rows = sample_rows(_sample(labels, predictions), 100, 100, **options)
    assert (None if rows is None else sorted(name for name, _ in rows)) == expected


def test_sample_boxes_are_normalised_and_clipped():
    from cloud.datasets.inbox import sample_rows

    rows = sample_rows(_sample([("missed", "pit", (-0.5, 50.0, 50.0, 100.9))], []), 100, 100)
    assert rows == [("pit", (0, 0.25, 0.75, 0.5, 0.5))]
