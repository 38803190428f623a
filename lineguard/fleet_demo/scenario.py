"""`--scenario variant`: a new product variant on line-1, noticed, learned, signed,
shipped to line-1 as canary and promoted to line-2, every step timed.

Steps (each prints one progress line and becomes a marker of the report):
drift onset (line-1's first `ribbed` part judged) -> alert (the cloud's drift monitor)
-> labels (the simulated operator, through line-1's panel) -> dataset accepted (the
labels exported, imported and joined with the parent's data) -> training (the cloud's
retrain worker runs the alert's request, held until that data arrived) -> gate ->
publish -> canary active (line-1 runs the new model) -> promoted (line-2 runs it).
A refused gate ends the story there: nothing is published and both lines keep their
model; the report says why.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lineguard.fleet_demo.fleet import PARENT, SITE, Fleet
from lineguard.fleet_demo.operator import (
    PanelClient,
    frames_with_images,
    label_frames,
    line_config,
)
from lineguard.fleet_demo.procs import FleetError
from lineguard.fleet_demo.report import collect_report, write_report

logger = logging.getLogger(__name__)


def say(line: str) -> None:
    """A progress line on stdout (the demo is a CLI: this is its output)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@dataclass
class ScenarioOptions:
    onset_part: int = 400
    sabotage: bool = False
    label_error_rate: float = 0.05
    labels: int = 120
    timeout_s: float = 1800.0
    after_promotion_s: float = 20.0
    eval_parts: int = 200
    eval_seed: int = 99


@dataclass
class Steps:
    """The story's markers: name -> unix time and detail; printed as they happen."""

    t0: float = field(default_factory=time.time)
    marks: list[dict[str, Any]] = field(default_factory=list)

    def mark(self, name: str, detail: str = "", at: float | None = None,
             line: str | None = None) -> None:
        at = time.time() if at is None else at
        self.marks.append({"step": name, "at_s": at, "line": line, "detail": detail})
        say(f"[{at - self.t0:7.1f} s] {name}{f' ({line})' if line else ''}: {detail}")


class Deadline:
    def __init__(self, timeout_s: float, stop: threading.Event, fleet: Fleet) -> None:
        self.end = time.monotonic() + timeout_s
        self.stop = stop
        self.fleet = fleet

    def wait_for(self, what: str, cond: Any, poll_s: float = 1.0) -> Any:
        while True:
            if self.stop.is_set():
                raise FleetError(f"stopped while waiting for {what}")
            self.fleet.sup.check_alive()
            value = cond()
            if value:
                return value
            if time.monotonic() > self.end:
                raise FleetError(f"scenario timed out waiting for {what}")
            time.sleep(poll_s)


def _first_part_at(store: Path, part_id: int) -> float | None:
    con = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)
    try:
        row = con.execute("SELECT MIN(judged_at) FROM inspections WHERE "
                          "CAST(part_id AS INTEGER) >= ?", (part_id,)).fetchone()
    finally:
        con.close()
    return float(row[0]) if row and row[0] is not None else None


def _alerts(fleet: Fleet, line: str) -> list[dict[str, Any]]:
    got = fleet.api_get(f"/drift/alerts?site={SITE}&line={line}")
    items = got.get("alerts", got.get("items", got)) if isinstance(got, dict) else got
    return list(items or [])


def _running_version(fleet: Fleet, line: str) -> int | None:
    got = fleet.api_get(f"/lines/{SITE}/{line}")
    model = got.get("model") or {}
    v = model.get("version")
    return int(v) if v is not None else None


def _alert_time(alert: dict[str, Any]) -> float:
    for key in ("raised_at_ms", "created_at_ms", "at_ms"):
        if key in alert and alert[key] is not None:
            return float(alert[key]) / 1000.0
    return time.time()


def run_variant(fleet: Fleet, opts: ScenarioOptions, stop: threading.Event) -> int:
    steps = Steps()
    dl = Deadline(opts.timeout_s, stop, fleet)
    l1, l2 = (s.line for s in fleet.opts.lines)
    spec1 = fleet.opts.lines[0]
    result: dict[str, Any] = {"sabotage": opts.sabotage, "parent": PARENT,
                              "onset_part": opts.onset_part, "outcome": "incomplete"}
    try:
        _story(fleet, opts, steps, dl, l1, l2, spec1, result)
    except FleetError as e:
        result["outcome"] = "error"
        result["error"] = str(e)
        say(f"error: {e}")
    finally:
        _snapshot_cloud(fleet, result, (l1, l2))
        stop_codes = fleet.stop()
        result["stop_codes"] = stop_codes
        say("stopped: " + ", ".join(f"{k} ({v})" for k, v in stop_codes.items()))
    # interrupted (Ctrl-C): the report, but without the minutes of evaluation
    report = collect_report(fleet, steps.marks, result, opts, evaluate_models=not stop.is_set())
    html, js = write_report(fleet.dir, report)
    say(f"report: {html} and {js}")
    for check in report["checks"]:
        say(f"  [{'ok' if check['ok'] else 'FAIL'}] {check['name']}: {check['detail']}")
    return 0 if all(c["ok"] for c in report["checks"]) else 1


def _story(fleet: Fleet, opts: ScenarioOptions, steps: Steps, dl: Deadline, l1: str,
           l2: str, spec1: Any, result: dict[str, Any]) -> None:
    store1 = fleet.store_path(l1)
    onset_at = dl.wait_for("line-1's first part of the new variant",
                           lambda: _first_part_at(store1, opts.onset_part))
    steps.mark("drift onset", f"part {opts.onset_part} onwards is `ribbed`", onset_at, l1)
    alert: dict[str, Any] = dl.wait_for("a drift alert on line-1",
                                        lambda: next(iter(_alerts(fleet, l1)), None),
                                        poll_s=2.0)
    moved = ", ".join(str(c.get("name", c)) for c in alert.get("channels", [])[:4])
    steps.mark("alert", f"drift alert {alert.get('alert_id', '')}: {moved}",
               _alert_time(alert), l1)
    result["alert"] = alert
    # the simulated operator labels what line-1 kept since the onset
    need = opts.labels
    dl.wait_for(f"{need} kept line-1 frames of the new variant",
                lambda: len(frames_with_images(store1, min_part_id=opts.onset_part,
                                               limit=need)) >= need, poll_s=3.0)
    client = PanelClient(fleet.panel_url(l1), "operator", fleet.passwords["operator"])
    frames = frames_with_images(store1, min_part_id=opts.onset_part, limit=need)
    stats = label_frames(client, frames, line_config(spec1.seed, spec1.drift),
                         error_rate=opts.label_error_rate, sabotage=opts.sabotage)
    result["labels"] = stats.__dict__
    steps.mark("labelled", f"{stats.labelled_frames} of {stats.frames} frames labelled: "
               f"{stats.confirmed} confirmed, "
               f"{stats.rejected} rejected, {stats.missed} missed boxes drawn "
               f"({stats.wrong} wrong{', SABOTAGED' if opts.sabotage else ''})", line=l1)
    # the line uploads each labelled frame to the cloud's inbox; accept them into
    # line-1's dataset (its newest version: the parent's data) as a new version
    dl.wait_for(f"{stats.labelled_frames} labelled samples in the cloud's inbox",
                lambda: _inbox_labelled(fleet, l1) >= stats.labelled_frames, poll_s=3.0)
    out = fleet.cloud("dataset accept", "dataset", "accept", f"{SITE}/{l1}", "--into",
                      f"{l1}-parts")
    steps.mark("dataset accepted", out.strip().splitlines()[-1], line=l1)
    # the alert asked for a retrain of line-1; the cloud's retrain worker held it until
    # this newer data arrived, and now fine-tunes the parent on it
    running = dl.wait_for(f"the retrain worker to start {l1}'s drift request",
                          lambda: _retrain_request(fleet, l1, ("running", "done", "failed")))
    steps.mark("training", f"request {running['id']} ({running['reason'][:60]}): "
               f"fine-tuning {running.get('parent') or PARENT} on "
               f"{running.get('dataset') or f'{l1}-parts'}",
               # the worker may start before the accept command has returned
               max(_iso_s(running.get("started_at")) or 0.0, steps.marks[-1]["at_s"]), l1)
    request = dl.wait_for(f"{l1}'s retraining to finish",
                          lambda: _retrain_request(fleet, l1, ("done", "failed")), poll_s=5.0)
    result["retrain_request"] = request
    if request["state"] == "failed":
        raise FleetError(f"retraining failed: {request.get('outcome')}")
    version = _candidate_version(request)
    result["candidate"] = f"demo@{version}" if version else None
    gate = _gate_report(fleet, version)
    result["gate"] = gate
    passed = bool(gate.get("passed"))
    steps.mark("gate", ("passed" if passed else "REFUSED: " + "; ".join(
        gate.get("reasons", []) or [str(request.get("outcome"))])),
               _iso_s(request.get("finished_at")), l1)
    if not passed:
        result["outcome"] = "refused"
        time.sleep(min(opts.after_promotion_s, 10.0))  # both lines keep their model
        result["running_after"] = {ln: _running_version(fleet, ln) for ln in (l1, l2)}
        return
    fleet.cloud("release publish", "release", "publish", f"demo@{version}")
    steps.mark("publish", f"demo@{version} signed into the TUF repository")
    fleet.cloud("rollout start", "rollout", "start", f"demo@{version}", "--canary",
                f"{SITE}/{l1}", "--health-window-s", str(fleet.opts.health_window_s),
                "--waves", "1")
    dl.wait_for(f"{l1} running demo@{version}", lambda: _running_version(fleet, l1) == version)
    steps.mark("canary active", f"{l1} runs demo@{version}", line=l1)
    dl.wait_for(f"{l2} running demo@{version}", lambda: _running_version(fleet, l2) == version,
                poll_s=2.0)
    steps.mark("promoted", f"{l2} runs demo@{version}", line=l2)
    result["outcome"] = "promoted"
    time.sleep(opts.after_promotion_s)
    result["running_after"] = {ln: _running_version(fleet, ln) for ln in (l1, l2)}


def _snapshot_cloud(fleet: Fleet, result: dict[str, Any], lines: tuple[str, str]) -> None:
    """What the report needs from the fleet API, read before the fleet stops."""
    snap: dict[str, Any] = {}
    for key, path in [("releases", "/releases"), ("rollouts", "/rollouts")] + [
            (f"alerts:{ln}", f"/drift/alerts?site={SITE}&line={ln}") for ln in lines] + [
            (f"windows:{ln}", f"/drift/lines/{SITE}/{ln}/windows") for ln in lines] + [
            (f"line:{ln}", f"/lines/{SITE}/{ln}") for ln in lines]:
        try:
            snap[key] = fleet.api_get(path)
        except OSError as e:
            snap[key] = {"error": str(e)}
    result["cloud"] = snap


def _inbox_labelled(fleet: Fleet, line: str) -> int:
    """Samples of `line` waiting in the inbox with operator labels."""
    out = fleet.cloud("dataset inbox", "dataset", "inbox", f"{SITE}/{line}")
    return sum(1 for row in out.splitlines() if " labelled " in row)


def _retrain_request(fleet: Fleet, line: str, states: tuple[str, ...]
                     ) -> dict[str, Any] | None:
    """`line`'s newest retrain request when it is in one of `states`."""
    got = fleet.api_get(f"/retrain/requests?line={SITE}/{line}&limit=1")
    return got[0] if got and got[0]["state"] in states else None


def _iso_s(text: str | None) -> float | None:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp() if text else None


def _candidate_version(request: dict[str, Any]) -> int | None:
    name, _, version = str(request.get("candidate") or "").partition("@")
    return int(version) if name == "demo" and version.isdigit() else None


def _gate_report(fleet: Fleet, version: int | None) -> dict[str, Any]:
    """The candidate's gate report (cloud.registry's GateReport), {} when there is none."""
    if version is None:
        return {}
    path = fleet.cloud_dir / "registry" / "demo" / str(version) / "gate" / "report.json"
    report: dict[str, Any] = json.loads(path.read_text("utf-8")) if path.exists() else {}
    return report


__all__ = ["ScenarioOptions", "run_variant"]
