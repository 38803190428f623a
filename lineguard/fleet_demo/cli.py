"""`lineguard demo fleet [--scenario variant] [--database-url URL] [--work-dir DIR]`.

Without `--scenario` it starts the fleet (mosquitto on a free port, the cloud's
collector, fleet API with the TUF repository, drift monitor, retraining worker and
rollout controller, two appliances on simulated lines with their panels), prints the
URLs and accounts and runs until Ctrl-C (SIGINT) or SIGTERM, then stops every child
(SIGTERM, wait, kill after a timeout). `--scenario variant` runs the story of
docs/fleet-demo.md and writes `report.html` and `report.json` into the work folder.
Exit status: 0 done, 1 the scenario's checks failed or a process died, 2 bad usage or
a missing prerequisite (mosquitto).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

from lineguard.fleet_demo.fleet import Fleet, FleetOptions, LineSpec
from lineguard.fleet_demo.procs import FleetError, mosquitto_binary
from protocol.cliargs import HelpFormatter, add_logging_arguments, configure_logging_from

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lineguard demo fleet", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--scenario", choices=["variant"], default=None,
                   help="run this story on its own and write a report")
    p.add_argument("--database-url", default=None,
                   help="cloud database (default: an SQLite file in the work folder)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="configs, stores, logs and the report (default: a new temp folder)")
    p.add_argument("--sabotage", action="store_true",
                   help="variant: the simulated operator shuffles its labels (the gate "
                        "must refuse the candidate)")
    p.add_argument("--label-error-rate", type=float, default=0.05,
                   help="variant: fraction of the operator's labels that are wrong")
    p.add_argument("--onset-part", type=int, default=400,
                   help="variant: line-1's parts are `ribbed` from this part id on")
    p.add_argument("--parts-per-minute", type=float, default=300.0,
                   help="each simulated line's rate (real time)")
    p.add_argument("--epochs", type=int, default=4, help="variant: fine-tuning epochs")
    p.add_argument("--labels", type=int, default=120,
                   help="variant: frames the simulated operator labels on line-1")
    p.add_argument("--timeout-min", type=float, default=30.0,
                   help="variant: give up after this many minutes")
    add_logging_arguments(p)
    return p


class _Stop:
    """SIGINT/SIGTERM set an event; the main thread stops the fleet."""

    def __init__(self) -> None:
        self.event = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.event.set()


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    configure_logging_from(args)
    try:
        mosquitto_binary()
    except FleetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not 0.0 <= args.label_error_rate <= 1.0:
        print("error: --label-error-rate must be within 0..1", file=sys.stderr)
        return 2
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="lineguard-fleet-"))
    drift1 = (f"variant=ribbed,onset_part={args.onset_part}"
              if args.scenario == "variant" else "")
    opts = FleetOptions(work_dir=work, database_url=args.database_url,
                        lines=(LineSpec("line-1", 11, drift1), LineSpec("line-2", 22)),
                        parts_per_minute=args.parts_per_minute, retrain_epochs=args.epochs)
    fleet = Fleet(opts)
    stop = _Stop()
    fleet.sup.stop_event = stop.event
    try:
        print("setting up the fleet (keys, parent data, registry, accounts) ...", flush=True)
        fleet.setup()
        fleet.start()
        print(fleet.banner(), flush=True)
        if args.scenario == "variant":
            from lineguard.fleet_demo.scenario import ScenarioOptions, run_variant

            sopts = ScenarioOptions(onset_part=args.onset_part, sabotage=args.sabotage,
                                    label_error_rate=args.label_error_rate,
                                    labels=args.labels, timeout_s=args.timeout_min * 60)
            return run_variant(fleet, sopts, stop.event)
        print("running; Ctrl-C stops everything", flush=True)
        while not stop.event.wait(1.0):
            fleet.sup.check_alive()
        return 0
    except FleetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        codes = fleet.stop()  # the scenario stops the fleet before its report
        if codes:
            print("stopped: " + ", ".join(f"{k} ({v})" for k, v in codes.items()),
                  flush=True)
