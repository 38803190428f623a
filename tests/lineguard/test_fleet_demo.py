"""`lineguard demo fleet` (issue 16): the prerequisites, the process supervisor, and the
whole fleet started and stopped for real (mosquitto, the cloud's services, two
appliances with their panels)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from lineguard.cli import main as lineguard_main
from lineguard.fleet_demo.fleet import Fleet, FleetOptions
from lineguard.fleet_demo.operator import PanelClient
from lineguard.fleet_demo.procs import FleetError, Supervisor, mosquitto_binary
from tests.mqtt_broker import requires_mosquitto


def test_missing_mosquitto_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match=r"install the `mosquitto` package"):
        mosquitto_binary(path=str(tmp_path), places=())


def test_the_cli_refuses_without_mosquitto(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import lineguard.fleet_demo.cli as cli

    def absent() -> str:
        raise FleetError("the MQTT broker `mosquitto` is not installed: install the "
                         "`mosquitto` package")

    monkeypatch.setattr(cli, "mosquitto_binary", absent)
    assert lineguard_main(["demo", "fleet"]) == 2
    assert "`mosquitto` package" in capsys.readouterr().err


def test_bad_label_error_rate_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    if not os.access("/usr/sbin/mosquitto", os.X_OK):
        pytest.skip("/usr/sbin/mosquitto is not installed")
    assert lineguard_main(["demo", "fleet", "--label-error-rate", "1.5"]) == 2
    assert "--label-error-rate" in capsys.readouterr().err


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_a_child_that_ignores_sigterm_is_killed_with_its_own_children(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path / "logs", stop_timeout_s=1.0)
    code = ("import signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(60)\n")
    child = sup.start("stubborn", [sys.executable, "-c", code])
    deadline = time.monotonic() + 30
    while not child.log_tail().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(child.log_tail().split()[0])
    codes = sup.stop_all()
    assert codes["stubborn"] == -9
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_a_failing_setup_command_says_what_failed(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path / "logs")
    with pytest.raises(FleetError, match=r"thing failed \(exit 3\):\nboom"):
        sup.run("thing", [sys.executable, "-c",
                          "import sys; print('boom'); sys.exit(3)"])


@pytest.mark.slow
@pytest.mark.mqtt
@requires_mosquitto
def test_the_fleet_starts_serves_and_stops_cleanly(tmp_path: Path) -> None:
    fleet = Fleet(FleetOptions(work_dir=tmp_path / "fleet", parent_train_images=16,
                               parent_val_images=8, parts_per_minute=120.0))
    try:
        fleet.setup()
        fleet.start()
        banner = fleet.banner()
        for spec in fleet.opts.lines:
            assert fleet.panel_url(spec.line) in banner
            client = PanelClient(fleet.panel_url(spec.line), "operator",
                                 fleet.passwords["operator"])
            assert client.get("/api/session")["role"] == "operator"
        assert fleet.passwords["engineer"] in banner
        with urllib.request.urlopen(f"{fleet.api_url}/tuf/metadata/1.root.json",
                                    timeout=10) as resp:
            assert json.loads(resp.read())["signed"]["_type"] == "root"
        # both lines report to the cloud through the broker and the collector
        deadline = time.monotonic() + 120
        seen: set[str] = set()
        while time.monotonic() < deadline and len(seen) < 2:
            seen = {ln["line"] for ln in fleet.api_get("/lines") if ln.get("online")}
            time.sleep(0.5)
        assert seen == {"line-1", "line-2"}
        pids = [c.process.pid for c in fleet.sup.children]
    finally:
        codes = fleet.stop()
    assert set(codes) == {"mosquitto", "cloud-collector", "cloud-api", "cloud-drift",
                          "cloud-retrain", "cloud-rollout", "line-1", "line-2"}
    assert all(c == 0 for c in codes.values()), codes
    assert not [p for p in pids if _alive(p)]


@pytest.mark.slow
@pytest.mark.mqtt
@requires_mosquitto
def test_ctrl_c_stops_every_child(tmp_path: Path) -> None:
    work = tmp_path / "fleet"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "lineguard", "demo", "fleet",
                             "--work-dir", str(work), "--parts-per-minute", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C stops everything" in line:
            break
    assert any("line-2 panel" in ln for ln in lines), "".join(lines)
    proc.send_signal(2)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "stopped: line-2 (0), line-1 (0)" in out


SCENARIO = pytest.mark.skipif(
    os.environ.get("LINEGUARD_FLEET_SCENARIO") != "1",
    reason="the whole variant scenario takes 7-15 min on 2 cores: set "
           "LINEGUARD_FLEET_SCENARIO=1 to run it (docs/fleet-demo.md)")


def _scenario(tmp_path: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    work = tmp_path / "fleet"
    done = subprocess.run([sys.executable, "-m", "lineguard", "demo", "fleet", "--scenario",
                           "variant", "--work-dir", str(work), "--labels", "80",
                           "--log-level", "warning", *extra], capture_output=True,
                          text=True, env=env, timeout=3000, check=False)
    report = json.loads((work / "report.json").read_text("utf-8"))
    assert (work / "report.html").read_text("utf-8").startswith("<!doctype html>")
    return done.returncode, report, done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.mqtt
@pytest.mark.ultralytics
@pytest.mark.timeout(3300)  # the subprocess's own limit is 3000 s; the suite default 600 s
@requires_mosquitto
@SCENARIO
def test_the_variant_scenario_closes_the_loop(tmp_path: Path) -> None:
    rc, report, out = _scenario(tmp_path)
    checks = {c["name"]: c for c in report["checks"]}
    assert rc == 0, out
    assert all(c["ok"] for c in checks.values()), checks
    assert report["result"]["outcome"] == "promoted"
    steps = [m["step"] for m in report["steps"]]
    assert steps == ["drift onset", "alert", "labelled", "dataset accepted", "training",
                     "gate", "publish", "canary active", "promoted"]


@pytest.mark.slow
@pytest.mark.mqtt
@pytest.mark.ultralytics
@pytest.mark.timeout(3300)  # the subprocess's own limit is 3000 s; the suite default 600 s
@requires_mosquitto
@SCENARIO
def test_sabotaged_labels_are_refused_by_the_gate(tmp_path: Path) -> None:
    rc, report, out = _scenario(tmp_path, "--sabotage")
    checks = {c["name"]: c for c in report["checks"]}
    assert rc == 0, (checks, out)
    for name in ("sabotage: the gate refuses the candidate", "sabotage: nothing published",
                 "sabotage: both lines keep their model"):
        assert checks[name]["ok"], (checks[name], out)
    html = (tmp_path / "fleet" / "report.html").read_text("utf-8")
    assert "The gate refused the candidate" in html


def test_a_setup_command_is_stopped_when_the_demo_stops(tmp_path: Path) -> None:
    import threading

    sup = Supervisor(tmp_path / "logs", stop_timeout_s=2.0, stop_event=threading.Event())
    assert sup.stop_event is not None
    timer = threading.Timer(0.5, sup.stop_event.set)
    timer.start()
    started = time.monotonic()
    with pytest.raises(FleetError, match="long: stopped"):
        sup.run("long", [sys.executable, "-c", "import time; time.sleep(60)"])
    assert time.monotonic() - started < 30
