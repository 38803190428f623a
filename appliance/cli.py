"""`lineguard appliance ...`: check a configuration, or run the appliance.

    lineguard appliance check-config [--config FILE] [--print] [--skip-model]
                                     [--skip-sources] [--source-timeout-ms MS]
    lineguard appliance config-reference
    lineguard appliance rollback [--config FILE] [--to VERSION]  (see appliance/cli_rollback.py)
    lineguard appliance report [--since 1h|all] [--json]      (see appliance/cli_report.py)
    lineguard appliance show PART_OR_FRAME [--out FILE] [--json]
    lineguard appliance user add|passwd|remove|list ...        (see appliance/cli_users.py)
    lineguard appliance export-labels DIR [--all] [--since 7d]  (see appliance/cli_labels.py)
    lineguard appliance run [--config FILE] [--frames N] [--json] [--data-dir DIR]
                            [--bundle PATH] [--status-interval-s S] [--log-level L]
                            [--log-format text|json]

With no `--config` the defaults run one simulated station with the demo bundle.
`run` stops on SIGTERM/SIGINT (orderly: queued frames are judged, the store flushed)
or after `--frames N` frames, and prints a summary (`--json`: one JSON object on
stdout). On a terminal it keeps a live one-line status. Logs always go to stderr
(`--log-format json`: one JSON object per line).
SIGTERM stops within `pipeline.drain_timeout_s` plus the store's flush: what is still
queued then is recorded as `uninspected: shutdown`, exit 0. A store that cannot commit
everything at stop (a full disk) is exit 1, and the next start records the gap
(`unclean_stop`, `uninspected: crash`), as it does after a kill.
Exit status: 0 done, 1 runtime failure (store, source), 2 bad configuration or model
(a bundle that cannot load is exit 2 unless `model.allow_start_without_model` is set; a
video file or image folder that cannot be opened is exit 2, a camera or stream that is
down is retried).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import yaml

from appliance import cli_labels, cli_report, cli_rollback, cli_users
from appliance.app import App, RunSummary, open_model_bundle
from appliance.capture import make_source
from appliance.capture.probe import SourceProbe, config_errors, probe_sources
from appliance.config import ApplianceConfig, load_config
from appliance.errors import ApplianceError, ConfigError, NoModelError
from appliance.pipeline.engine import Engine
from appliance.pipeline.stats import PipelineStats
from models.errors import ModelError
from protocol.cliargs import (
    HelpFormatter,
    add_logging_arguments,
    configure_logging_from,
    positive_int,
)

logger = logging.getLogger(__name__)


def _load(args: argparse.Namespace) -> ApplianceConfig:
    overrides: dict[str, Any] = {}
    if args.data_dir is not None:
        overrides["data_dir"] = str(args.data_dir)
    if args.bundle is not None:
        overrides["model"] = {"bundle": str(args.bundle)}
    return load_config(args.config, overrides)


def check_config(args: argparse.Namespace) -> int:
    cfg = _load(args)
    probes: list[SourceProbe] = []
    if args.skip_sources:
        for station in cfg.stations:
            make_source(station.source)  # builds (does not open) every source
    else:
        probes = probe_sources([s.source for s in cfg.stations],
                               timeout_ms=args.source_timeout_ms)
        errors = config_errors(probes)
        if errors:
            for probe in probes:
                print(f"source {probe.line()}")
            raise ConfigError("; ".join(errors))
    print(f"config ok: site {cfg.site}, line {cfg.line}, {len(cfg.stations)} station(s): "
          + ", ".join(f"{s.name} ({s.source.kind})" for s in cfg.stations))
    for probe in probes:
        print(f"source {probe.line()}")
    print(f"store: {cfg.store.path} (images in {cfg.store.images.dir})")
    if not args.skip_model:
        _check_model(cfg)
    if args.print:
        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def _check_model(cfg: ApplianceConfig) -> None:
    """Load, verify and warm the configured bundle; a .tar is unpacked into a temporary
    folder under the bundles folder (same disk) that is removed afterwards, so a check
    leaves nothing behind, whatever its outcome."""
    engine = Engine(cfg.engine, max_batch=cfg.pipeline.max_batch)
    made = [p for p in (cfg.bundles_dir, *cfg.bundles_dir.parents) if not p.exists()]
    try:
        with contextlib.ExitStack() as stack:
            work = cfg.bundles_dir
            if not cfg.model.bundle.is_dir():
                cfg.bundles_dir.mkdir(parents=True, exist_ok=True)
                work = Path(stack.enter_context(tempfile.TemporaryDirectory(
                    prefix=".check-config-", dir=cfg.bundles_dir)))
            bundle = open_model_bundle(cfg.model.bundle, work, cfg.model.max_unpacked_bytes)
            model = engine.load(bundle, verify=cfg.model.verify_golden)
    finally:
        for folder in made:  # nearest first: only the empty folders made here
            with contextlib.suppress(OSError):
                folder.rmdir()
    golden = "golden set reproduces" if cfg.model.verify_golden else "golden set not checked"
    print(f"model ok: {model.version_id} ({model.manifest.label}) on "
          f"{','.join(model.info.providers)}, {golden}, batch 1..{model.max_batch} warmed")


def _print_summary(s: RunSummary) -> None:
    v = s.verdicts
    print(f"\nstopped by {s.stopped_by} after {s.duration_s:.1f} s: {s.frames} frames, "
          f"pass {v['pass']}, fail {v['fail']}, uninspected {v['uninspected']}"
          + (f" ({', '.join(f'{k} {n}' for k, n in sorted(s.uninspected.items()))})"
             if s.uninspected else ""))
    total = s.latency_ms.get("total", {})
    infer = s.latency_ms.get("infer", {})
    print(f"throughput {s.throughput_fps:.1f} fps, {s.batches} batches (mean "
          f"{s.mean_batch:.1f}); latency total p50 {total.get('p50', 0):.1f} / p99 "
          f"{total.get('p99', 0):.1f} ms, infer p50 {infer.get('p50', 0):.1f} ms")
    model = f"{s.model['version_id']} on {','.join(s.providers)}" if s.model else "no model"
    print(f"model {model}; store {s.store_path} ({s.store_inspections} inspections)")


def run(args: argparse.Namespace) -> int:
    cfg = _load(args)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logger.info("%s: stopping (draining queues, flushing the store)",
                    signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    tty = sys.stdout.isatty() and not args.json
    interval_s = args.status_interval_s or (1.0 if tty else 10.0)

    def on_status(stats: PipelineStats) -> None:
        if tty:
            print("\r" + stats.status_line() + "\x1b[K", end="", flush=True)
        else:
            print(stats.status_line(), flush=True)

    app = App(cfg, max_frames=args.frames)
    try:
        summary = app.run(stop, on_status=None if args.json else on_status,
                          status_interval_s=interval_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if args.json:
        print(json.dumps(summary.as_dict(), sort_keys=True))
    else:
        _print_summary(summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lineguard appliance", formatter_class=HelpFormatter,
                                     description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-config",
                           help="validate a config, open its sources once, load its model",
                           formatter_class=HelpFormatter)
    check.add_argument("--config", type=Path, help="YAML file (default: built-in defaults)")
    check.add_argument("--print", action="store_true", help="print the effective config")
    check.add_argument("--skip-model", action="store_true", help="do not load the bundle")
    check.add_argument("--skip-sources", action="store_true",
                       help="do not open the sources (by default each is opened once and "
                            "its state reported; a missing video file or image folder is "
                            "a config error, a camera or stream that is down is reported)")
    check.add_argument("--source-timeout-ms", type=positive_int, default=2000,
                       help="longest wait for a stream to connect and give a frame")
    check.add_argument("--data-dir", type=Path,
                       help="override data_dir (store, images) (default: the config's)")
    check.add_argument("--bundle", type=Path, help="override model.bundle (default: the config's)")
    add_logging_arguments(check, default_level="warning")
    ref = sub.add_parser("config-reference", formatter_class=HelpFormatter,
                         help="print every config key with its default, unit and bounds (Markdown)")
    add_logging_arguments(ref, default_level="warning")
    go = sub.add_parser("run", help="run the appliance", formatter_class=HelpFormatter)
    go.add_argument("--config", type=Path, help="YAML file (default: built-in defaults)")
    go.add_argument("--frames", type=positive_int,
                    help="stop after N frames, all stations (default: run until stopped)")
    go.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    go.add_argument("--data-dir", type=Path,
                    help="override data_dir (store, images) (default: the config's)")
    go.add_argument("--bundle", type=Path, help="override model.bundle (default: the config's)")
    go.add_argument("--status-interval-s", type=float, default=None,
                    help="seconds between status lines (default: 1 on a terminal, else 10)")
    add_logging_arguments(go, default_level="info")
    cli_report.add_parsers(sub)
    cli_users.add_parsers(sub)
    cli_labels.add_parsers(sub)
    cli_rollback.add_parser(sub, HelpFormatter)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    configure_logging_from(args)
    if args.command == "config-reference":
        from protocol.configref import config_reference

        print(config_reference(ApplianceConfig, "Appliance configuration",
                               "lineguard appliance config-reference"), end="")
        return 0
    commands = {"check-config": check_config, "run": run, "report": cli_report.report,
                "show": cli_report.show, "user": cli_users.user,
                "export-labels": cli_labels.export, "rollback": cli_rollback.rollback}
    try:
        return commands[args.command](args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (ModelError, NoModelError) as e:
        print(f"model error: {e}", file=sys.stderr)
        return 2
    except ApplianceError as e:
        if args.command == "check-config":
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"error: {e}", file=sys.stderr)
        return 1
