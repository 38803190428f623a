"""The fleet on one machine: its folders, ports, configs, setup commands and processes.

`Fleet.setup()` writes the cloud config and one appliance config per line, creates
the TUF repository and its keys, imports the parent's data and the demo bundle into the
registry (approved, published, assigned to every line), and creates each panel's
accounts; `Fleet.start()` starts mosquitto, the cloud services and the appliances and
waits until every HTTP endpoint answers. Every command goes through `lineguard ...`.
"""

from __future__ import annotations

import json
import logging
import secrets
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lineguard.fleet_demo.procs import (
    HOST,
    FleetError,
    Supervisor,
    free_port,
    lineguard_argv,
    start_broker,
    wait_until,
)

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DEMO_BUNDLE = ROOT / "models" / "demo" / "bundle"
DEMO_WEIGHTS = ROOT / "models" / "demo" / "bundle-weights.pt"
SITE = "demo"
PARENT = "demo@1"
PARENT_DATASET = "parts"
HOLDOUT_DATASET = "parts-holdout"
ACCOUNTS = (("operator", "operator"), ("engineer", "engineer"))


@dataclass
class LineSpec:
    """One simulated line: its id, linesim seed and drift knobs."""

    line: str
    seed: int
    drift: str = ""


@dataclass
class FleetOptions:
    """What the demo runs with (the CLI's flags)."""

    work_dir: Path
    database_url: str | None = None
    lines: tuple[LineSpec, ...] = (LineSpec("line-1", 11), LineSpec("line-2", 22))
    parts_per_minute: float = 300.0
    parent_train_images: int = 300
    parent_val_images: int = 60
    # the parent's holdout, which the gate holds every candidate to on the original
    # product: its own linesim seed, large enough that one box more or less found is
    # not a verdict
    holdout_images: int = 200
    drift_window_frames: int = 40
    drift_sample_frames: int = 32
    reference_frames: int = 240
    keep_pass_fraction: float = 0.25
    health_window_s: int = 60
    min_parts: int = 100
    rollout_interval_s: float = 2.0
    update_poll_s: float = 3.0
    retrain_epochs: int = 4
    retrain_imgsz: int = 256
    password_len: int = 12
    extra_cloud: dict[str, Any] = field(default_factory=dict)


@dataclass
class Fleet:
    """See the module docstring."""

    opts: FleetOptions
    sup: Supervisor = field(init=False)
    broker_port: int = field(default=0, init=False)
    api_port: int = field(default=0, init=False)
    panel_ports: dict[str, int] = field(default_factory=dict, init=False)
    api_token: str = field(default="", init=False)
    passwords: dict[str, str] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.dir = self.opts.work_dir.resolve()
        self.sup = Supervisor(self.dir / "logs")

    # ------------------------------------------------------------------ paths
    @property
    def cloud_dir(self) -> Path:
        return self.dir / "cloud"

    @property
    def cloud_config(self) -> Path:
        return self.cloud_dir / "cloud.yaml"

    def line_dir(self, line: str) -> Path:
        return self.dir / line

    def line_config(self, line: str) -> Path:
        return self.line_dir(line) / "appliance.yaml"

    def store_path(self, line: str) -> Path:
        return self.line_dir(line) / "data" / "lineguard.db"

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    def panel_url(self, line: str) -> str:
        return f"http://{HOST}:{self.panel_ports[line]}"

    @property
    def database_url(self) -> str:
        return self.opts.database_url or f"sqlite:///{self.cloud_dir / 'fleet.db'}"

    def cloud(self, name: str, *args: str, stdin: str | None = None,
              timeout_s: float = 900.0) -> str:
        """Run `lineguard cloud ARGS --config cloud.yaml` to completion."""
        return self.sup.run(name, lineguard_argv("cloud", *args, "--config",
                                                 str(self.cloud_config)),
                            stdin=stdin, timeout_s=timeout_s)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cloud_dir.mkdir(exist_ok=True)
        self.broker_port, self.api_port = free_port(), free_port()
        self.panel_ports = {spec.line: free_port() for spec in self.opts.lines}
        self.api_token = secrets.token_urlsafe(24)
        self.passwords = {name: f"{name}-{secrets.token_hex(self.opts.password_len // 2)}"
                          for name, _ in ACCOUNTS}
        tuf = self.cloud_dir / "tuf"
        self.sup.run("release init", lineguard_argv(
            "cloud", "release", "init", str(tuf), "--keys-dir",
            str(self.cloud_dir / "tuf-keys")))
        self._write_cloud_config(tuf)
        for spec in self.opts.lines:
            # the line's upload token for the cloud's sample inbox (printed once)
            out = self.cloud("line token", "line", "token", f"{SITE}/{spec.line}")
            token_file = self.line_dir(spec.line) / "upload.token"
            token_file.parent.mkdir(parents=True, exist_ok=True)
            token_file.write_text(out.strip().splitlines()[-1].strip() + "\n", "utf-8")
            token_file.chmod(0o600)
            self._write_line_config(spec, tuf / "metadata" / "1.root.json")
        self._seed_cloud()
        for spec in self.opts.lines:
            for name, role in ACCOUNTS:
                self.sup.run(f"user add {name}", lineguard_argv(
                    "appliance", "user", "add", name, "--role", role, "--config",
                    str(self.line_config(spec.line))), stdin=self.passwords[name] + "\n")

    def _broker(self, client_id: str) -> dict[str, Any]:
        return {"host": HOST, "port": self.broker_port, "client_id": client_id,
                "reconnect": {"initial_s": 0.2, "max_s": 2.0}}

    def _write_cloud_config(self, tuf: Path) -> None:
        c = self.cloud_dir
        o = self.opts
        cfg: dict[str, Any] = {
            "database": {"url": self.database_url},
            "registry": {"root": str(c / "registry")},
            "datasets": {"root": str(c / "datasets")},
            "retrain": {
                "work_dir": str(c / "retrain-runs"),
                "training": {"epochs": o.retrain_epochs, "imgsz": o.retrain_imgsz,
                             "batch": 16, "device": "cpu", "close_mosaic": 0},
                "gate": {"latency_budget_ms": 1000.0, "map50_tolerance": 0.02},
                "lines": {f"{SITE}/{s.line}": {"dataset": f"{s.line}-parts"}
                          for s in o.lines},
                "min_interval_h": 0.0, "poll_s": 1.0,
            },
            "release": {
                "repository_dir": str(tuf),
                "signers_file": str(c / "tuf-keys" / "signers.json"),
                "rollout": {"interval_s": o.rollout_interval_s,
                            "broker": self._broker("lineguard-rollout-1"),
                            "bounds": {"health_window_s": o.health_window_s,
                                       "min_parts": o.min_parts,
                                       "activation_timeout_s": 900,
                                       "max_latency_p99_ms": 5000.0,
                                       "baseline_window_s": 600,
                                       "max_defect_rate_shift": 0.5}},
            },
            "collector": {"broker": self._broker("lineguard-collector-1"),
                          "log_interval_s": 0},
            "api": {"host": HOST, "port": self.api_port, "token": self.api_token},
            "drift": {"broker": self._broker("lineguard-drift-1"),
                      "line_reference_frames": 200, "bootstrap_replicates": 100},
        }
        for key, value in o.extra_cloud.items():
            cfg[key] = {**cfg.get(key, {}), **value}
        self.cloud_config.write_text(yaml.safe_dump(cfg, sort_keys=False), "utf-8")

    def _write_line_config(self, spec: LineSpec, root: Path) -> None:
        o = self.opts
        d = self.line_dir(spec.line)
        d.mkdir(parents=True, exist_ok=True)
        cfg: dict[str, Any] = {
            "site": SITE, "line": spec.line, "data_dir": str(d / "data"),
            "stations": [{"name": "station-1", "source": {
                "kind": "sim", "seed": spec.seed, "parts_per_minute": o.parts_per_minute,
                "realtime": True, "drift": spec.drift}}],
            "model": {"bundle": str(DEMO_BUNDLE)},
            "store": {"images": {"keep_pass_fraction": o.keep_pass_fraction}},
            "telemetry": {"broker": self._broker(f"line.{SITE}.{spec.line}"),
                          "metrics_interval_s": 2.0, "reconnect_settle_s": 0.0},
            "panel": {"host": HOST, "port": self.panel_ports[spec.line]},
            "updates": {"repository_url": f"{self.api_url}/tuf",
                        "trusted_root": str(root), "poll_interval_s": o.update_poll_s,
                        # a model retrained for a new variant disagrees with its parent
                        # on that variant by design: no agreement floor in the demo
                        "shadow_frames": 20, "min_agreement": 0.0, "health_frames": 50,
                        "max_defect_rate_shift": 1.0, "max_latency_ratio": 10.0},
            # only the frames the operator labels go to the inbox (no sampling budget)
            "uploads": {"url": self.api_url, "token_file": str(d / "upload.token"),
                        "budget_per_hour": 0, "operator_settle_s": 2.0, "poll_s": 1.0},
            "drift": {"window_frames": o.drift_window_frames, "window_s": 120.0,
                      "sample_frames": o.drift_sample_frames,
                      "refine_reference_frames": o.reference_frames},
        }
        self.line_config(spec.line).write_text(yaml.safe_dump(cfg, sort_keys=False),
                                               "utf-8")

    def _seed_cloud(self) -> None:
        """The parent's data, the demo bundle approved and published, every line
        assigned to it (so each line's update agent has a signed assignment)."""
        data = self.cloud_dir / "parent-data"
        o = self.opts
        self.sup.run("linesim export", lineguard_argv(
            "linesim", "export", str(data), "--train", str(o.parent_train_images),
            "--val", str(o.parent_val_images), "--seed", "1"))
        self.cloud("dataset import", "dataset", "import", str(data), "--name",
                   PARENT_DATASET)
        for spec in o.lines:  # each line's fine-tuning data starts as the parent's
            self.cloud("dataset union", "dataset", "union", f"{PARENT_DATASET}@1",
                       "--name", f"{spec.line}-parts")
        holdout = self.cloud_dir / "parent-holdout"
        self.sup.run("linesim export holdout", lineguard_argv(
            "linesim", "export", str(holdout), "--train", "1", "--val",
            str(o.holdout_images), "--seed", "2"))
        self.cloud("dataset import holdout", "dataset", "import", str(holdout), "--name",
                   HOLDOUT_DATASET, "--split", "keep")
        self.cloud("models import", "models", "import", str(DEMO_BUNDLE), "--weights",
                   str(DEMO_WEIGHTS), "--holdout", f"{HOLDOUT_DATASET}@1", "--state",
                   "approved")
        self.cloud("release publish", "release", "publish", PARENT)
        for spec in o.lines:
            self.cloud("release assign", "release", "assign", f"{SITE}/{spec.line}",
                       PARENT)

    # ------------------------------------------------------------------ run
    def start(self, *, timeout_s: float = 180.0) -> None:
        start_broker(self.sup, self.dir / "broker", self.broker_port)
        cfg = str(self.cloud_config)
        self.sup.start("cloud-collector", lineguard_argv("cloud", "collect", "--config", cfg))
        self.sup.start("cloud-api", lineguard_argv("cloud", "serve", "--config", cfg))
        self.sup.start("cloud-drift", lineguard_argv("cloud", "drift", "run", "--config",
                                                     cfg))
        self.sup.start("cloud-retrain", lineguard_argv("cloud", "retrain-worker", "--config",
                                                       cfg))
        self.sup.start("cloud-rollout", lineguard_argv("cloud", "rollout-controller",
                                                       "--config", cfg))
        wait_until(lambda: _http_ok(f"{self.api_url}/health"), timeout_s,
                   "the fleet API", self.sup)
        for spec in self.opts.lines:
            self.sup.start(spec.line, lineguard_argv(
                "appliance", "run", "--config", str(self.line_config(spec.line))))
        for spec in self.opts.lines:
            wait_until(lambda s=spec: _http_ok(f"{self.panel_url(s.line)}/healthz"),
                       timeout_s, f"{spec.line}'s panel", self.sup)

    def stop(self) -> dict[str, int | None]:
        return self.sup.stop_all()

    def banner(self) -> str:
        lines = [f"fleet demo in {self.dir} (logs: {self.sup.log_dir})",
                 f"  MQTT broker     mqtt://{HOST}:{self.broker_port}",
                 f"  fleet API       {self.api_url}  (bearer token: {self.api_token})",
                 f"  TUF repository  {self.api_url}/tuf/metadata/",
                 f"  database        {self.database_url}"]
        for spec in self.opts.lines:
            lines.append(f"  {spec.line} panel   {self.panel_url(spec.line)}/"
                         + (f"  (linesim drift: {spec.drift})" if spec.drift else ""))
        lines.append("  accounts (every panel): " + ", ".join(
            f"{name} / {self.passwords[name]} ({role})" for name, role in ACCOUNTS))
        return "\n".join(lines)

    def api_get(self, path: str) -> Any:
        req = urllib.request.Request(f"{self.api_url}{path}",
                                     headers={"Authorization": f"Bearer {self.api_token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


__all__ = ["Fleet", "FleetError", "FleetOptions", "LineSpec"]
