"""Rendered linesim calibration views, shared by the calibration tests (module scope:
rendering a set takes a few seconds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from linesim.calibration import BoardSpec, ViewsConfig, write_calibration_views


def render(root: Path, **knobs: Any) -> tuple[Path, dict[str, Any]]:
    truth = write_calibration_views(root, ViewsConfig(**knobs))
    return root, json.loads(truth.read_text())


@pytest.fixture(scope="session")
def chessboard_views(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return render(tmp_path_factory.mktemp("chessboard"))


@pytest.fixture(scope="session")
def charuco_views(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return render(tmp_path_factory.mktemp("charuco"), board=BoardSpec(kind="charuco"), seed=3)
