"""`lineguard bundle ...`: every command, and every error as one `error:` line, exit 2."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from models.bundle import Bundle
from models.cli import main

from .onnx_builders import (
    NEU_DET_CLASSES,
    NEU_DET_DATA,
    NEU_DET_ONNX,
    REPO_ROOT,
    build_tiny_bundle,
    build_yolo_raw_model,
    neu_det_available,
    resign_bundle,
    simple_raw_detections,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("cli")
    bundle = build_tiny_bundle(work / "bundle", work)
    assert isinstance(bundle, Bundle)
    return bundle.root


@pytest.fixture
def tiny(tiny_dir: Path, tmp_path: Path) -> Path:
    shutil.copytree(tiny_dir, tmp_path / "tiny")
    return tmp_path / "tiny"


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_verify_pack_unpack_inspect(
    capsys: pytest.CaptureFixture[str], tiny: Path, tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "verify", tiny, "--providers", "cpu")
    assert code == 0
    assert "golden: 3 images, 6 detections reproduced" in out and "ok: tiny v1" in out
    archive = tmp_path / "tiny.tar.gz"
    assert run(capsys, "pack", tiny, archive)[0] == 0
    code, out, _ = run(capsys, "verify", archive)
    assert code == 0 and "ok: tiny v1" in out
    code, out, _ = run(capsys, "unpack", archive, tmp_path / "unpacked")
    assert code == 0 and (tmp_path / "unpacked" / "model.onnx").is_file()
    code, out, _ = run(capsys, "inspect", archive)
    assert code == 0 and "classes:     3: dent, scratch, stain" in out
    assert "golden/golden.json" in out
    code, out, _ = run(capsys, "inspect", tiny, "--json")
    assert code == 0 and json.loads(out)["name"] == "tiny"


def test_error_missing_bundle(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "verify", tmp_path / "nothing")
    assert_error(code, err, "bundle not found", "nothing")


def test_error_sha256_mismatch(capsys: pytest.CaptureFixture[str], tiny: Path) -> None:
    with (tiny / "golden" / "img_002.png").open("ab") as fh:
        fh.write(b"junk")
    code, _, err = run(capsys, "verify", tiny)
    assert_error(code, err, "golden/img_002.png: sha256 mismatch")


def test_error_unknown_manifest_field(capsys: pytest.CaptureFixture[str], tiny: Path) -> None:
    data = json.loads((tiny / "manifest.json").read_text())
    data["input"]["colour_space"] = "srgb"
    (tiny / "manifest.json").write_text(json.dumps(data))
    code, _, err = run(capsys, "inspect", tiny)
    assert_error(code, err, "input.colour_space: unknown field")


def test_error_hostile_tar(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../x")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    code, _, err = run(capsys, "unpack", archive, tmp_path / "dest")
    assert_error(code, err, "'../x'", "escapes")
    code, _, err = run(capsys, "verify", archive)
    assert_error(code, err, "'../x'")
    assert not (tmp_path / "x").exists()


def test_error_output_shape_vs_manifest(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    boxes, scores = simple_raw_detections(3)
    onnx_path = build_yolo_raw_model(tmp_path / "m.onnx", boxes, scores, declared_rows="rows")
    images = tmp_path / "imgs"
    images.mkdir()
    import cv2
    import numpy as np

    cv2.imwrite(str(images / "a.png"), np.full((64, 64, 3), 200, np.uint8))
    code, _, err = run(
        capsys,
        "wrap",
        onnx_path,
        tmp_path / "out",
        "--classes",
        "a,b",
        "--imgsz",
        "64",
        "--golden-from",
        images,
        "--name",
        "tiny",
    )
    assert_error(code, err, "expected 4+2 = 6 rows for 2 classes", "found 7")
    assert not (tmp_path / "out").exists()


def test_error_golden_mismatch_names_image(capsys: pytest.CaptureFixture[str], tiny: Path) -> None:
    resign_bundle(tiny, lambda d: d["preprocess"].update(pad_value=0))
    code, _, err = run(capsys, "verify", tiny)
    assert_error(code, err, "golden image img_000.png: preprocessed tensor sha256")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["frobnicate"], "invalid choice"),
        (["verify"], "the following arguments are required"),
        (["pack", "a"], "the following arguments are required"),
        (["wrap", "m.onnx", "out", "--name", "x"], "--golden-from"),
    ],
)
def test_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str) -> None:
    code, _, err = run(capsys, *argv)
    assert_error(code, err, fragment)


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "verify" in out


@pytest.mark.skipif(not neu_det_available(), reason="shared NEU-DET data missing")
def test_wrap_neu_det_from_onnx_metadata(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_dir = tmp_path / "neu"
    code, out, err = run(
        capsys,
        "wrap",
        NEU_DET_ONNX,
        out_dir,
        "--golden-from",
        NEU_DET_DATA / "images" / "val",
        "--golden-count",
        "2",
        "--name",
        "neu-det-yolo11n",
        "--providers",
        "cpu",
    )
    assert code == 0, err
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["classes"] == NEU_DET_CLASSES  # read from the ONNX metadata
    assert (manifest["input"]["height"], manifest["input"]["width"]) == (224, 224)
    code, out, _ = run(capsys, "verify", out_dir)
    assert code == 0 and "golden: 2 images" in out


def test_real_process_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lineguard", "bundle", "verify", str(tmp_path / "missing")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: bundle not found")
    assert "Traceback" not in result.stderr
