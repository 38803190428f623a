"""`lineguard cloud drift`: run the drift monitor, list or acknowledge its alerts.

    lineguard cloud drift run    --config cloud.yaml    # the monitor (MQTT + database)
    lineguard cloud drift alerts --config cloud.yaml [--site S] [--line L]
    lineguard cloud drift ack    --config cloud.yaml ALERT_ID --by NAME
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from protocol.cliargs import HelpFormatter

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from cloud.config import CloudConfig


def add_drift_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `drift` under the cloud's sub-commands."""
    help_ = "the drift monitor: run it, list or acknowledge its alerts"
    dr = sub.add_parser("drift", help=help_, description=__doc__, formatter_class=HelpFormatter)
    dsub = dr.add_subparsers(dest="drift_cmd", required=True)
    for name, what in (("run", "run the monitor until SIGTERM"),
                       ("alerts", "list drift alerts, newest first"),
                       ("ack", "acknowledge an alert (its detector starts again)")):
        p = dsub.add_parser(name, help=what, description=what, formatter_class=HelpFormatter)
        p.add_argument("--config", type=Path, required=True, help="cloud config file (YAML)")
        if name == "alerts":
            p.add_argument("--site", help="only this site's alerts (default: every site)")
            p.add_argument("--line", help="only this line's alerts (default: every line)")
            p.add_argument("--limit", type=int, default=50, help="at most this many alerts")
        if name == "ack":
            p.add_argument("alert_id", help="the alert's id (as `drift alerts` lists it)")
            p.add_argument("--by", required=True, help="who acknowledges (for the record)")


def _engine(cfg: CloudConfig) -> Engine:
    # The one way a cloud process opens the database (migrates if migrate_on_start).
    from cloud.datasets.service import open_database

    return open_database(cfg)


def run_drift(args: argparse.Namespace,
              request_retrain: Callable[[str, str], object] | None = None) -> int:
    """The `drift` command; `request_retrain` is the datasets' hook (wired by cloud/cli)."""
    from cloud.config import load_config
    from cloud.drift.monitor import DriftMonitor
    from cloud.drift.references import BundleReferences
    from cloud.drift.service import DriftService
    from cloud.drift.store import DriftStore
    from cloud.errors import CloudError, ConfigError

    try:
        cfg = load_config(args.config)
        if cfg.drift is None:
            raise ConfigError(f"{args.config}: no `drift` section")
        drift_cfg = cfg.drift
        engine = _engine(cfg)
    except CloudError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.drift_cmd == "alerts":
        for a in DriftStore(engine).alerts(args.site, args.line, args.limit):
            moved = ", ".join(f"{n} {v:+.2f}sd" for n, v in a.channels)
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(a.raised_at_ms / 1000))
            print(f"{a.alert_id} {when}Z {a.site}/{a.line} {a.model_name} v{a.model_version}"
                  f" onset frame {a.onset_frame_id}: {moved}"
                  + (" (acknowledged)" if a.acknowledged_at_ms else ""))
        return 0
    if args.drift_cmd == "ack":
        found = DriftStore(engine).acknowledge(args.alert_id, args.by, int(time.time() * 1000))
        if found is None:
            print(f"error: no drift alert {args.alert_id}", file=sys.stderr)
            return 1
        print(f"{found.alert_id} acknowledged by {found.acknowledged_by}")
        return 0
    if request_retrain is None and drift_cfg.request_retrain:
        from cloud.retrain.requests import RetrainQueue

        request_retrain = RetrainQueue(engine, min_interval_h=cfg.retrain.min_interval_h
                                       ).request_retrain
    references = BundleReferences(drift_cfg.bundles_dir)
    service = DriftService(drift_cfg, lambda publish: DriftMonitor(
        engine, drift_cfg, references=references, publish=publish,
        request_retrain=request_retrain))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    service.start()
    try:
        stop.wait()
    finally:
        service.stop()
    print(f"drift monitor stopped: {service.counts} {service.monitor.counts}")
    return 0
