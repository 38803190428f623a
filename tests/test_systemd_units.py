"""The systemd units: `systemd-analyze verify` accepts both (when the tool is present),
the appliance unit is `Type=notify` with a watchdog, both are hardened to an exposure
level of "OK" or better (`systemd-analyze security --offline=yes`), with a memory cap
and secrets through LoadCredential."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[1] / "systemd"
NAMES = ["lineguard-appliance.service", "lineguard-collector.service"]
TOOL = shutil.which("systemd-analyze")
needs_tool = pytest.mark.skipif(TOOL is None, reason="systemd-analyze is not installed")


def _directives(name: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def _installable_copy(name: str, tmp_path: Path) -> Path:
    """The unit with its ExecStart commands pointing at an executable that exists here
    (verify checks that the command is executable)."""
    text = (UNITS / name).read_text().replace("/opt/lineguard/.venv/bin/lineguard", "/bin/true")
    out = tmp_path / name
    out.write_text(text)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_units_are_hardened_with_memory_cap_and_credentials(name: str) -> None:
    d = _directives(name)
    for key in ("MemoryMax", "LoadCredential", "ProtectSystem", "PrivateTmp",
                "NoNewPrivileges", "CapabilityBoundingSet", "RestrictAddressFamilies",
                "SystemCallFilter"):
        assert key in d, f"{name}: {key}= missing"
    assert d["ProtectSystem"] == ["strict"] and d["CapabilityBoundingSet"] == [""]


def test_appliance_unit_is_notify_with_a_watchdog() -> None:
    d = _directives("lineguard-appliance.service")
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert int(d["WatchdogSec"][0]) > 0 and d["Restart"] == ["on-failure"]


@needs_tool
def test_systemd_analyze_verify_accepts_both_units(tmp_path: Path) -> None:
    copies = [str(_installable_copy(n, tmp_path)) for n in NAMES]
    done = subprocess.run([TOOL or "", "verify", "--man=no", *copies], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


@needs_tool
@pytest.mark.parametrize("name", NAMES)
def test_security_exposure_is_ok_or_better(name: str, tmp_path: Path) -> None:
    done = subprocess.run([TOOL or "", "security", "--offline=yes", "--no-pager",
                           str(_installable_copy(name, tmp_path))],
                          capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", done.stdout)
    if match is None:
        pytest.skip(f"systemd-analyze security --offline unsupported here: {done.stderr[-300:]}")
    assert float(match.group(1)) < 5.0 and match.group(2) in ("OK", "SAFE", "PERFECT"), \
        match.group(0)
