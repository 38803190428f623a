"""The installable package: build the wheel, install it (not editable) into a fresh
venv and run `lineguard demo --frames 20` from an unrelated directory.

What it proves: the wheel holds every module, the package data (the demo bundle, the
JSON schemas, the training model YAML) and the console script, and nothing reaches back
into the source tree (the demo bundle is found through importlib.resources).

How, and why this way (robust on a clean clone with 2 cores, offline or not):
- The wheel is built from a copy of just what the build reads (pyproject, README, the
  packages), so a stale `build/` or `*.egg-info` in the checkout can neither leak into
  it nor be written by the test. `--no-build-isolation` builds with the setuptools the
  dev extra installs, so no build backend is downloaded.
- The venv is new and empty and the wheel goes in with `--no-deps`; its third-party
  dependencies come from the test environment's site-packages, appended to the new
  venv's path by a `.pth` line. A directory named in a `.pth` file is only appended to
  `sys.path` (its own `.pth` files are not run), so the editable install of the checkout
  that lives there stays inactive, and the wheel's copy, first on the path, is the one
  imported - which the test checks. Installing the dependencies from PyPI instead would
  download about 400 MB (onnxruntime-gpu, opencv) per run and fail without a network.
- That every declared dependency is satisfied is checked against the installed wheel's
  own metadata, so a requirement missing from pyproject shows up here too.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "README.md", "appliance", "cloud", "models", "calibration",
                "protocol", "linesim", "lineguard")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CHECK_DEPENDENCIES = """
import importlib.metadata as md
from packaging.requirements import Requirement
bad = []
for line in md.requires("lineguard") or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        bad.append(f"{req} (not installed)")
        continue
    if not req.specifier.contains(have, prereleases=True):
        bad.append(f"{req} (have {have})")
print("unsatisfied:", bad)
raise SystemExit(1 if bad else 0)
"""

WHERE = """
import appliance, cloud.training, models.demo, protocol.schemas, appliance.panel.web
print(appliance.__file__)
print(models.demo.demo_bundle_dir())
print(protocol.schemas.SCHEMA_DIR)
print(appliance.panel.web.STATIC_DIR)
"""


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None,
         timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    assert done.returncode == 0, (
        f"{args} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


def _clean_env() -> dict[str, str]:
    """The environment of a user's shell: nothing pointing at the checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"}}
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def test_wheel_installs_and_runs_the_demo_from_anywhere(tmp_path: Path) -> None:
    src, dist, venv, elsewhere = (tmp_path / n for n in ("src", "dist", "venv", "elsewhere"))
    for name in BUILD_INPUTS:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns(
                "__pycache__", "*.pyc", "*.egg-info", "bundle-weights.pt"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(source, src / name)
    env = _clean_env()

    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(dist), str(src)], cwd=tmp_path, env=env)
    wheels = list(dist.glob("lineguard-*.whl"))
    assert len(wheels) == 1, wheels

    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", "-q", str(wheels[0])], cwd=tmp_path, env=env)
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path("
                         "'purelib'))"], cwd=tmp_path, env=env).stdout.strip())
    deps = [*site.getsitepackages(), sysconfig.get_path("purelib")]
    (purelib / "zz_lineguard_test_deps.pth").write_text(
        "".join(f"{p}\n" for p in dict.fromkeys(deps)), encoding="utf-8")

    elsewhere.mkdir()
    _run([str(python), "-c", CHECK_DEPENDENCIES], cwd=elsewhere, env=env)
    where = _run([str(python), "-c", WHERE], cwd=elsewhere, env=env).stdout.splitlines()
    for path in where:  # the wheel's copy, not the checkout's
        assert Path(path).is_relative_to(venv), where
    assert (Path(where[1]) / "manifest.json").is_file()
    assert {"panel.js", "panel.css"} <= {p.name for p in Path(where[3]).iterdir()}

    demo = _run([str(venv / "bin" / "lineguard"), "demo", "--frames", "20"],
                cwd=elsewhere, env=env)
    out = demo.stdout
    assert out.startswith("bundle demo v"), out[:2000]
    assert "20 parts: " in out and "defective parts caught" in out, out[-2000:]
    assert list(elsewhere.iterdir()) == []  # the demo writes to a temporary directory
