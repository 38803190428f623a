"""The release units: `systemd-analyze verify` accepts them (when the tool is present),
the controller and refresh services are hardened, the timer starts the refresh."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[3] / "systemd"
NAMES = ["lineguard-release-refresh.service", "lineguard-release-refresh.timer",
         "lineguard-rollout-controller.service"]
TOOL = shutil.which("systemd-analyze")


def _text(name: str) -> str:
    return (UNITS / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", NAMES[::2])
def test_services_are_hardened(name: str) -> None:
    text = _text(name)
    for directive in ("ProtectSystem=strict", "CapabilityBoundingSet=\n", "NoNewPrivileges=yes",
                      "MemoryMax=", "SystemCallFilter=@system-service", "PrivateTmp=yes"):
        assert directive in text, f"{name}: {directive}"
    assert "lineguard cloud " in text


def test_timer_runs_the_refresh_often_enough() -> None:
    text = _text("lineguard-release-refresh.timer")
    assert "OnUnitActiveSec=1h" in text and "Persistent=true" in text
    assert "release refresh" in _text("lineguard-release-refresh.service")


@pytest.mark.skipif(TOOL is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    for name in NAMES:
        (tmp_path / name).write_text(
            _text(name).replace("/opt/lineguard/.venv/bin/lineguard", "/bin/true"))
    done = subprocess.run([TOOL or "", "verify", "--man=no",
                           *(str(tmp_path / n) for n in NAMES)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
