"""The house rules of ../shared/DESIGN.md that the code itself can check: the appliance
runs without torch/ultralytics, and the packages import only what they may."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BANNED = {
    # paho only through protocol/ (protocol/mqtt_client.py builds every MQTT client)
    "appliance": {"cloud", "paho"},
    "cloud": {"appliance", "paho"},
    "models": {"appliance", "cloud", "linesim"},
    "protocol": {"appliance", "cloud", "linesim"},
    "calibration": {"appliance", "cloud", "linesim"},
    "linesim": {"appliance", "cloud", "models", "protocol", "calibration"},
}


@pytest.mark.parametrize("package", sorted(BANNED))
def test_package_imports_only_what_it_may(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}"
                    for n in names if n.split(".")[0] in BANNED[package]]
    assert not bad


def test_the_appliance_process_never_loads_torch_or_ultralytics() -> None:
    code = (
        "import sys\n"
        "import appliance.app, appliance.cli, appliance.demo, appliance.telemetry\n"
        "import models, protocol\n"
        "print(sorted(m for m in ('torch', 'ultralytics', 'cloud') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
