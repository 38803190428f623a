"""`lineguard demo`: the real appliance pipeline judging parts of the simulated line.

Runs `App` (store, engine, dynamic batcher, verdicts) with the shipped demo bundle on
one simulated station for a bounded number of parts (faster than real time unless
`--realtime`), with a live status line, one line per failed (or uninspected) part with
what was found and linesim's ground truth, and a summary with the recall of defective
parts. The store and kept images go to a temporary directory unless `--data-dir`.
"""

from __future__ import annotations

import argparse
import queue
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.app import App, RunSummary
from appliance.capture import SimulatedLineSource
from appliance.config import DEMO_BUNDLE, ApplianceConfig, load_config
from appliance.errors import ApplianceError
from appliance.pipeline.stats import PipelineStats
from appliance.records import InspectionRecord
from models.bundle import load_bundle
from models.errors import ModelError
from protocol.cliargs import (
    HelpFormatter,
    add_logging_arguments,
    configure_logging_from,
    positive_int,
)

if TYPE_CHECKING:
    from linesim import SimFrame

STATION = "line"


class GroundTruth:
    """Each simulated part's true defect classes, by part id (fed by the line source's
    `on_part`), so the demo can score its verdicts."""

    def __init__(self) -> None:
        self.classes: dict[str, list[str]] = {}

    def record(self, sim: SimFrame) -> None:
        self.classes[str(sim.part_id)] = [d.class_name for d in sim.part.defects]


def _part_line(record: InspectionRecord, truth: list[str] | None) -> str:
    found = ", ".join(f"{d.class_name} {d.score:.2f}" for d in record.defects)
    label = record.verdict.upper() if record.verdict != "uninspected" else \
        f"UNINSPECTED ({record.reason})"
    total = record.latency_ms.get("total", 0.0)
    return (f"part {record.part_id:>5}  {label:4s}  found [{found}]  "
            f"truth [{', '.join(truth or []) or '-'}]  ({total:.0f} ms)")


def _summary(s: RunSummary, records: list[InspectionRecord], truth: dict[str, list[str]],
             data_dir: str) -> None:
    defective = caught = false_rejects = good = 0
    for r in records:
        bad = bool(truth.get(r.part_id or "", []))
        defective += bad
        good += not bad
        caught += bad and r.verdict == "fail"
        false_rejects += (not bad) and r.verdict != "pass"
    v = s.verdicts
    total = s.latency_ms.get("total", {})
    infer = s.latency_ms.get("infer", {})
    print(f"\n{s.frames} parts: {v['pass']} pass, {v['fail']} fail, {v['uninspected']} "
          f"uninspected; defective parts caught {caught}/{defective}, false rejects "
          f"{false_rejects}/{good}")
    print(f"throughput {s.throughput_fps:.1f} parts/s; latency p50 {total.get('p50', 0):.0f} "
          f"ms, p99 {total.get('p99', 0):.0f} ms (inference p50 {infer.get('p50', 0):.0f} ms, "
          f"mean batch {s.mean_batch:.1f})")
    model = f"{s.model['version_id']} ({s.model['label']})" if s.model else "no model"
    print(f"model {model} on {', '.join(s.providers) or '-'}; {data_dir}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lineguard demo", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--bundle", type=Path, default=DEMO_BUNDLE,
                        help="model bundle directory or .tar")
    parser.add_argument("--frames", type=positive_int, default=200, help="parts to inspect")
    parser.add_argument("--batch", type=positive_int, default=8, help="max batch size")
    parser.add_argument("--seed", type=int, default=7, help="simulated line seed")
    parser.add_argument("--drift", default="",
                        help="linesim drift knobs, comma-separated, e.g. blur_sigma_px=2 "
                        "(default: none)")
    parser.add_argument("--realtime", action="store_true",
                        help="parts arrive at the line's rate (default: as fast as judged)")
    parser.add_argument("--data-dir", type=Path, help="keep the store here (default: temp)")
    parser.add_argument("--verbose", action="store_true",
                        help="show the appliance's logs (same as --log-level info)")
    add_logging_arguments(parser, default_level="warning")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose and args.log_level == "warning":
        args.log_level = "info"
    configure_logging_from(args)

    from linesim import ConfigError, Drift, LineConfig

    try:
        manifest = load_bundle(args.bundle, verify_files=False).manifest
        line_config = LineConfig(seed=args.seed, drift=Drift.parse(args.drift))
    except (ModelError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="lineguard-demo-") as tmp:
        data_dir = args.data_dir or Path(tmp)
        try:
            cfg = load_config(None, {
                "data_dir": str(data_dir),
                "stations": [{"name": STATION, "source": {"kind": "sim", "seed": args.seed,
                                                          "drift": args.drift}}],
                "model": {"bundle": str(args.bundle)},
                "pipeline": {"max_batch": args.batch, "overflow": "block"},
            })
        except ApplianceError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"bundle {manifest.name} v{manifest.version} ({manifest.label}) classes="
              f"{','.join(manifest.classes)}; {args.frames} parts of the simulated line "
              f"(seed {args.seed}{', drift ' + args.drift if args.drift else ''})")
        where = (f"store and kept images in {data_dir}" if args.data_dir else
                 "store in a temporary directory (keep it with --data-dir)")
        truth = GroundTruth()
        line = SimulatedLineSource(line_config, realtime=args.realtime, on_part=truth.record)
        return _run(cfg, args, line, truth, where)


def _run(cfg: ApplianceConfig, args: argparse.Namespace, line: SimulatedLineSource,
         truth: GroundTruth, data_dir: str) -> int:
    records: list[InspectionRecord] = []
    to_print: queue.Queue[InspectionRecord] = queue.Queue()

    def on_verdict(record: InspectionRecord) -> None:
        records.append(record)
        if record.verdict != "pass":
            to_print.put(record)

    tty = sys.stdout.isatty()
    shown = {"last": 0.0}

    def on_status(stats: PipelineStats) -> None:
        lines = []
        while True:
            try:
                lines.append(_part_line(r := to_print.get_nowait(), truth.classes.get(
                    r.part_id or "")))
            except queue.Empty:
                break
        if tty:
            print("\r\x1b[K" + "".join(f"{x}\n" for x in lines) + stats.status_line(),
                  end="", flush=True)
        else:
            for x in lines:
                print(x)
            if stats.uptime_s - shown["last"] >= 2.0:
                shown["last"] = stats.uptime_s
                print(stats.status_line(), flush=True)

    app = App(cfg, max_frames=args.frames, sources={STATION: line}, listeners=[on_verdict],
              require_model=True)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = app.run(stop, on_status=on_status, status_interval_s=0.25)
    except (ApplianceError, ModelError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if app.pipeline is not None:
        on_status(app.pipeline.stats())
    _summary(summary, records, truth.classes, data_dir)
    return 0
