"""models.yolo_dataset (data.yaml, image lists, labels) and the pure helpers of
models.evaluate (ground truth, image reading, multi-label expansion)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.evaluate import (
    expand_multi_label,
    ground_truth_xyxy,
    read_image,
    validation_postprocess_spec,
)
from models.manifest import PostprocessSpec
from models.yolo_dataset import DatasetError, label_path_for, load_data_yaml


def _image(path: Path, h: int = 8, w: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((h, w, 3), 128, np.uint8))
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _dataset(root: Path, yaml_text: str) -> Path:
    _image(root / "images" / "val" / "b.png")
    _image(root / "images" / "val" / "a.jpg")
    _image(root / "images" / "val" / "sub" / "c.bmp")
    _write(root / "images" / "val" / "notes.txt", "not an image")
    _image(root / "images" / "train" / "t.png")
    return _write(root / "data.yaml", yaml_text)


# --- data.yaml ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names_yaml", "expected"),
    [
        ("names: [dent, scratch]", ["dent", "scratch"]),
        ("names:\n  0: dent\n  1: scratch", ["dent", "scratch"]),
        ("names:\n  1: scratch\n  0: dent", ["dent", "scratch"]),
        ("names: {'0': dent, '1': scratch}", ["dent", "scratch"]),
        ("nc: 2\nnames: [dent, scratch]", ["dent", "scratch"]),
        ("nc: 3", ["class0", "class1", "class2"]),
    ],
)
def test_names_list_or_dict(tmp_path: Path, names_yaml: str, expected: list[str]) -> None:
    yaml_path = _dataset(tmp_path, f"train: images/train\nval: images/val\n{names_yaml}\n")
    assert load_data_yaml(yaml_path).names == expected


@pytest.mark.parametrize(
    ("names_yaml", "message"),
    [
        ("nc: 3\nnames: [dent, scratch]", "nc is 3 but 2 names"),
        ("names:\n  0: dent\n  2: stain", "keys must be 0..1"),
        ("names: {a: dent}", "keys must be class ids"),
        ("names: dent", "must be a list or a mapping"),
        ("names: []", "'names' is empty"),
        ("# no names", "'names' is missing"),
    ],
)
def test_bad_names(tmp_path: Path, names_yaml: str, message: str) -> None:
    yaml_path = _dataset(tmp_path, f"train: images/train\nval: images/val\n{names_yaml}\n")
    with pytest.raises(DatasetError, match=message):
        load_data_yaml(yaml_path)


def test_relative_path_is_resolved_against_the_yaml_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data" / "set"
    _dataset(root, "")
    yaml_path = _write(
        tmp_path / "configs" / "data.yaml", "path: ../data/set\nval: images/val\nnames: [a]\n"
    )
    monkeypatch.chdir(tmp_path / "data")  # a cwd where ../data/set does not exist
    dataset = load_data_yaml(yaml_path)
    assert dataset.root == root.resolve()
    assert dataset.yaml_path == yaml_path.resolve()
    assert dataset.label == "configs/data.yaml"
    assert [p.name for p in dataset.images("val")] == ["a.jpg", "b.png", "c.bmp"]


def test_absolute_path_and_missing_path_key(tmp_path: Path) -> None:
    _dataset(tmp_path / "ds", "")
    absolute = _write(
        tmp_path / "abs.yaml", f"path: {tmp_path / 'ds'}\nval: images/val\nnames: [a]\n"
    )
    assert load_data_yaml(absolute).root == (tmp_path / "ds").resolve()
    no_path = _write(tmp_path / "ds" / "data.yaml", "val: images/val\nnames: [a]\n")
    assert load_data_yaml(no_path).root == (tmp_path / "ds").resolve()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("val: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("path: nowhere\nval: images/val\nnames: [a]\n", "is not a directory"),
        ("path: 3\nval: images/val\nnames: [a]\n", "'path' must be a string"),
        ("names: [a]\n", "no split given"),
        ("val: 3\nnames: [a]\n", "'val' must be a path or a list"),
    ],
)
def test_bad_yaml(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_data_yaml(_write(tmp_path / "data.yaml", text))


def test_missing_yaml(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"data\.yaml not found"):
        load_data_yaml(tmp_path / "data.yaml")


# --- splits -------------------------------------------------------------------------------


def test_split_listing_is_recursive_sorted_and_images_only(tmp_path: Path) -> None:
    dataset = load_data_yaml(_dataset(tmp_path, "train: images/train\nval: images/val\nnames: [a]"))
    images = dataset.images("val")
    assert [p.relative_to(tmp_path).as_posix() for p in images] == [
        "images/val/a.jpg",
        "images/val/b.png",
        "images/val/sub/c.bmp",
    ]
    assert [p.name for p in dataset.images("train")] == ["t.png"]


def test_split_as_list_file_and_list_of_sources(tmp_path: Path) -> None:
    _dataset(tmp_path, "")
    _write(
        tmp_path / "lists" / "val.txt",
        f"../images/val/b.png\n./../images/val/a.jpg\n\n{tmp_path / 'images/train/t.png'}\n",
    )
    yaml_path = _write(
        tmp_path / "data.yaml",
        "val: lists/val.txt\ntest: [images/train, images/val/sub]\nnames: [a]\n",
    )
    dataset = load_data_yaml(yaml_path)
    assert [p.name for p in dataset.images("val")] == ["b.png", "a.jpg", "t.png"]
    assert all(p.is_file() for p in dataset.images("val"))
    assert [p.name for p in dataset.images("test")] == ["t.png", "c.bmp"]


@pytest.mark.parametrize(
    ("yaml_text", "split", "message"),
    [
        ("val: images/val\nnames: [a]", "test", "has no split 'test' \\(splits: val\\)"),
        ("val: images/nope\nnames: [a]", "val", "images/nope does not exist"),
        ("val: empty\nnames: [a]", "val", "no images found"),
        ("val: list.txt\nnames: [a]", "val", "1 listed image\\(s\\) not found"),
    ],
)
def test_bad_splits(tmp_path: Path, yaml_text: str, split: str, message: str) -> None:
    _dataset(tmp_path, "")
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "list.txt", "images/val/a.jpg\nimages/val/missing.jpg\n")
    dataset = load_data_yaml(_write(tmp_path / "data.yaml", yaml_text))
    with pytest.raises(DatasetError, match=message):
        dataset.images(split)


# --- labels -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "label"),
    [
        ("/d/images/val/x.jpg", "/d/labels/val/x.txt"),
        ("/d/images/val/x.v2.PNG", "/d/labels/val/x.v2.txt"),
        ("/d/images/a/images/x.png", "/d/images/a/labels/x.txt"),  # the last /images/
        ("/d/pics/x.png", "/d/pics/x.txt"),  # no images folder: next to the image
    ],
)
def test_label_path_for(image: str, label: str) -> None:
    assert label_path_for(Path(image)) == Path(label)


def _labels(tmp_path: Path, text: str, names: str = "[a, b, c]") -> np.ndarray:
    _image(tmp_path / "images" / "val" / "x.png")
    label_file = tmp_path / "labels" / "val" / "x.txt"
    label_file.parent.mkdir(parents=True, exist_ok=True)
    label_file.write_bytes(text.encode("utf-8"))
    dataset = load_data_yaml(_write(tmp_path / "data.yaml", f"val: images/val\nnames: {names}"))
    return dataset.labels_for(dataset.images("val")[0])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", np.zeros((0, 5))),
        ("\n\n  \n", np.zeros((0, 5))),
        ("0 0.5 0.5 0.2 0.4\n", [[0, 0.5, 0.5, 0.2, 0.4]]),
        (
            "\ufeff2 0.5 0.5 0.2 0.4\r\n1 0.1 0.1 0.1 0.1",
            [[2, 0.5, 0.5, 0.2, 0.4], [1, 0.1, 0.1, 0.1, 0.1]],
        ),
        ("1 0.2 0.2 0.6 0.2 0.6 0.8 0.2 0.8\n", [[1, 0.4, 0.5, 0.4, 0.6]]),  # polygon
        ("0 1.005 0.5 0.2 0.2\n", [[0, 1.005, 0.5, 0.2, 0.2]]),  # within the 1% tolerance
    ],
)
def test_labels(tmp_path: Path, text: str, expected: object) -> None:
    labels = _labels(tmp_path, text)
    assert labels.dtype == np.float32 and labels.shape[1] == 5
    np.testing.assert_allclose(
        labels, np.asarray(expected, dtype=np.float32).reshape(-1, 5), atol=1e-6
    )


def test_duplicate_label_rows_are_dropped(tmp_path: Path) -> None:
    labels = _labels(tmp_path, "1 0.5 0.5 0.2 0.2\n0 0.3 0.3 0.1 0.1\n1 0.5 0.5 0.2 0.2\n")
    np.testing.assert_allclose(labels, [[0, 0.3, 0.3, 0.1, 0.1], [1, 0.5, 0.5, 0.2, 0.2]])


def test_missing_label_file_means_no_objects(tmp_path: Path) -> None:
    image = _image(tmp_path / "images" / "val" / "y.png")
    dataset = load_data_yaml(_write(tmp_path / "data.yaml", "val: images/val\nnames: [a]"))
    assert dataset.labels_for(image).shape == (0, 5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 0.5 0.5 0.2\n", "x.txt:1: expected 'class cx cy w h'"),
        ("0 0.5 0.5 0.2 0.2 0.9\n", "got 6 values"),
        ("0 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.2 0.2\n", "x.txt:2: class 3 is not one of 0..2"),
        ("1.5 0.5 0.5 0.2 0.2\n", "class 1.5 is not one of"),
        ("0 0.5 0.5 0.2 abc\n", "not a number"),
        ("0 50 50 20 20\n", "must be normalised"),
        ("0 -0.5 0.5 0.2 0.2\n", "negative"),
        ("0 0.5 0.5 -0.001 0.2\n", "negative"),
    ],
)
def test_bad_labels(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        _labels(tmp_path, text)


# --- evaluate helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "wh", "boxes", "classes"),
    [
        ([[0, 0.5, 0.5, 1.0, 1.0]], (200, 100), [[0, 0, 200, 100]], [0]),
        ([[2, 0.25, 0.5, 0.1, 0.2]], (200, 100), [[40, 40, 60, 60]], [2]),
        ([[1, 0.0, 0.0, 0.2, 0.2]], (10, 10), [[-1, -1, 1, 1]], [1]),  # not clipped
        (np.zeros((0, 5)), (10, 10), np.zeros((0, 4)), []),
    ],
)
def test_ground_truth_xyxy(
    labels: object, wh: tuple[int, int], boxes: object, classes: list[int]
) -> None:
    got_boxes, got_classes = ground_truth_xyxy(np.asarray(labels, np.float32), *wh)
    np.testing.assert_allclose(got_boxes, np.asarray(boxes, float).reshape(-1, 4), atol=1e-5)
    assert got_classes.tolist() == classes and got_classes.dtype == np.int64


def test_read_image_grey_and_colour(tmp_path: Path) -> None:
    grey = tmp_path / "g.png"
    assert cv2.imwrite(str(grey), np.arange(12, dtype=np.uint8).reshape(3, 4) * 20)
    image = read_image(grey)
    assert image.shape == (3, 4, 3) and image.dtype == np.uint8
    assert (image[:, :, 0] == image[:, :, 2]).all() and image[2, 3, 1] == 220
    deep = tmp_path / "d.png"
    assert cv2.imwrite(str(deep), np.full((5, 6), 65535, np.uint16))
    assert read_image(deep).shape == (5, 6, 3)


def test_read_image_errors(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.jpg", "not a jpeg")
    with pytest.raises(DatasetError, match=r"cannot read image .*bad\.jpg"):
        read_image(bad)
    with pytest.raises(DatasetError, match="cannot read image"):
        read_image(tmp_path / "missing.png")


def test_expand_multi_label() -> None:
    # 1 image, 3 anchors, 2 classes
    raw = np.array(
        [
            [
                [10, 20, 30],  # cx
                [11, 21, 31],  # cy
                [5, 6, 7],  # w
                [8, 9, 10],  # h
                [0.9, 0.0005, 0.3],  # class 0
                [0.4, 0.0002, 0.0],  # class 1
            ]
        ],
        dtype=np.float32,
    )
    out = expand_multi_label(raw, 0.001)
    # anchor-major: (a0, c0), (a0, c1), (a2, c0); anchor 1 has nothing above 0.001
    np.testing.assert_allclose(
        out[0],
        [
            [10, 10, 30],
            [11, 11, 31],
            [5, 5, 7],
            [8, 8, 10],
            [0.9, 0.0, 0.3],
            [0.0, 0.4, 0.0],
        ],
    )


def test_expand_multi_label_pads_short_images() -> None:
    raw = np.zeros((2, 6, 4), np.float32)
    raw[0, 4, :] = 0.5  # image 0: four anchors of class 0
    raw[1, 5, 2] = 0.7  # image 1: one anchor of class 1
    out = expand_multi_label(raw, 0.001)
    assert out.shape == (2, 6, 4)
    assert (out[1, 4:, 1:] == 0).all() and out[1, 5, 0] == pytest.approx(0.7)
    empty = expand_multi_label(np.zeros((1, 6, 4), np.float32), 0.001)
    assert empty.shape == (1, 6, 1) and not empty.any()


def test_validation_postprocess_spec_overrides_serving_thresholds() -> None:
    serving = PostprocessSpec(
        score_threshold=0.4,
        class_score_thresholds={"a": 0.9},
        iou_threshold=0.5,
        max_detections=10,
        max_candidates=500,
        agnostic=True,
    )
    spec = validation_postprocess_spec(serving)
    assert spec.score_threshold == 0.001 and spec.class_score_thresholds == {}
    assert spec.iou_threshold == 0.7 and spec.max_detections == 300
    assert spec.max_candidates == 500 and spec.agnostic is True


def test_dataset_paths_are_not_cwd_dependent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    yaml_path = _dataset(tmp_path / "ds", "path: .\nval: images/val\nnames: [a]")
    monkeypatch.chdir(tmp_path)
    relative = Path(os.path.relpath(yaml_path, tmp_path))
    assert load_data_yaml(relative).images("val")[0].is_absolute()
