"""Every bad input of `lineguard calibration` is one clear `error:` line and exit 2."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from calibration.cli import main
from linesim.config import LineConfig
from linesim.dataset import export_yolo

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo" / "bundle"
Views = tuple[Path, dict[str, Any]]
BOARD = ["--board", "chessboard:9x6", "--square-mm", "10"]


def _copy_views(src: Path, dst: Path, names: list[str]) -> Path:
    dst.mkdir()
    for i, name in enumerate(names):
        shutil.copy(src / name, dst / f"view_{i:03d}.png")
    return dst


def _empty(views: Views, tmp: Path) -> list[str]:
    (tmp / "empty").mkdir()
    return ["camera", str(tmp / "empty"), *BOARD]


def _blurred(views: Views, tmp: Path) -> list[str]:
    root = _copy_views(views[0], tmp / "set", views[1]["views"][:9])
    image = cv2.imread(str(root / "view_002.png"))
    cv2.imwrite(str(root / "view_002.png"), cv2.GaussianBlur(image, (0, 0), 3))
    return ["camera", str(root), *BOARD]


def _partly_out(views: Views, tmp: Path) -> list[str]:
    root = _copy_views(views[0], tmp / "set", views[1]["views"][:8])
    image = cv2.imread(str(root / "view_004.png"))
    shifted = np.full_like(image, 110)
    shifted[:, 300:] = image[:, :340]  # the left part of the board slides out of view
    cv2.imwrite(str(root / "view_004.png"), shifted)
    return ["camera", str(root), *BOARD]


def _sizes_differ(views: Views, tmp: Path) -> list[str]:
    root = _copy_views(views[0], tmp / "set", views[1]["views"][:8])
    image = cv2.imread(str(root / "view_005.png"))
    cv2.imwrite(str(root / "view_005.png"), cv2.resize(image, (800, 600)))
    return ["camera", str(root), *BOARD]


def _too_few(views: Views, tmp: Path) -> list[str]:
    root = _copy_views(views[0], tmp / "set", views[1]["views"][:3])
    return ["camera", str(root), "--skip-bad", *BOARD]


def _not_covered(views: Views, tmp: Path) -> list[str]:
    root = _copy_views(views[0], tmp / "set", [views[1]["views"][4]] * 6)  # centre only
    return ["camera", str(root), *BOARD]


def _bad_board(views: Views, tmp: Path) -> list[str]:
    return ["camera", str(views[0]), "--board", "checkers:9by6", "--square-mm", "10"]


def _wrong_square(views: Views, tmp: Path) -> list[str]:
    camera = tmp / "camera.json"
    assert main(["camera", str(views[0]), "--include", "view_", *BOARD, "--out",
                 str(camera)]) == 0
    return ["scale", str(views[0] / "scale_board.png"), "--camera", str(camera),
            "--camera-height-mm", "400", "--board", "chessboard:9x6", "--square-mm", "13"]


CAMERA_CASES: dict[str, tuple[Callable[[Views, Path], list[str]], str]] = {
    "empty folder": (_empty, "no images"),
    "blurred view": (_blurred, "view_002.png: the board looks blurred (edge sharpness 0.2"),
    "board partly out of frame": (_partly_out, "view_004.png: no chessboard:9x6 corners found "
                                  "(board partly out of frame"),
    "image sizes differ": (_sizes_differ, "image sizes differ: view_000.png is 640x480 but "
                           "view_005.png is 800x600"),
    "too few usable views": (_too_few, "too few usable views: the board was found in 3 of 3"),
    "views not covering the frame": (_not_covered, "views do not cover the frame: no board "
                                     "corners in the top-right, bottom-left"),
    "bad board spec": (_bad_board, "--board 'checkers:9by6': expected chessboard:COLSxROWS"),
    "wrong square size": (_wrong_square, "--square-mm 13 is probably wrong (the views fit 9.9"),
}


@pytest.mark.slow  # renders a set of views once (a few seconds)
@pytest.mark.parametrize("case", sorted(CAMERA_CASES))
def test_bad_camera_input_is_one_line_and_exit_2(
    case: str, chessboard_views: Views, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, message = CAMERA_CASES[case]
    argv = make(chessboard_views, tmp_path)
    if argv[0] == "camera":
        argv += ["--out", str(tmp_path / "out.json")]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert message in err, err
    assert not (tmp_path / "out.json").exists()


@pytest.fixture(scope="module")
def defective_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("defective-only")
    return export_yolo(root, LineConfig(seed=5, defect_free_fraction=0.0), n_train=0, n_val=4)


@pytest.mark.parametrize(("extra", "message"), [
    ([], "every part of the set is defective (a set of one kind only)"),
    (["--per-class"], "cannot support a 0.01 miss rate; need at least 300"),
])
def test_thresholds_refuse_sets_that_cannot_support_the_target(
    defective_only: Path, extra: list[str], message: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["thresholds", str(DEMO), str(defective_only), "--target-miss-rate", "0.01",
            "--out", str(tmp_path / "out"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "out").exists()
