"""`lineguard cloud retrain` (fine-tune a registered model into a gated candidate) and
`lineguard cloud retrain-worker` (run queued and scheduled retraining requests)."""

from __future__ import annotations

import argparse
import getpass
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol.cliargs import HelpFormatter, positive_int

if TYPE_CHECKING:
    from cloud.config import CloudConfig
    from cloud.registry import ModelRegistry
    from cloud.retrain.data import IndexSource


TRAINING_FLAGS = ("epochs", "imgsz", "batch", "device", "seed", "freeze", "lr0")


def add_retrain_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `retrain` and `retrain-worker` on the `lineguard cloud` parser."""
    from cloud.cli_models import model_ref_arg

    text = "fine-tune a registered model on a dataset into a candidate, and gate it"
    rt = sub.add_parser("retrain", help=text, formatter_class=HelpFormatter,
                        description=text + ".\nTraining defaults and the gate come from the "
                        "config's `retrain:` section; the flags override the training ones.")
    rt.add_argument("--config", type=Path, required=True, help="cloud YAML config file")
    rt.add_argument("--from", dest="parent", type=model_ref_arg, required=True,
                    metavar="MODEL@VERSION", help="the registered model to fine-tune")
    rt.add_argument("--data", required=True, metavar="DATASET@VERSION|PATH",
                    help="dataset version, or a YOLO folder / data.yaml")
    rt.add_argument("--epochs", type=positive_int, help="training epochs")
    rt.add_argument("--imgsz", type=positive_int, help="training image size (px)")
    rt.add_argument("--batch", type=positive_int, help="images per batch")
    rt.add_argument("--device", help="Ultralytics device: cpu, 0, 0,1 (DDP), mps")
    rt.add_argument("--seed", type=int, help="random seed")
    rt.add_argument("--freeze", type=int, metavar="N",
                    help="keep the parent's first N layers (0: fine-tune every layer)")
    rt.add_argument("--lr0", type=float, help="initial learning rate")
    wk = sub.add_parser("retrain-worker", help="run queued and scheduled retraining requests",
                        description="run queued and scheduled retraining requests",
                        formatter_class=HelpFormatter)
    wk.add_argument("--config", type=Path, required=True, help="cloud YAML config file")
    wk.add_argument("--once", action="store_true",
                    help="queue what is due, run what is queued, then exit")


def _datasets(cfg: CloudConfig, registry: ModelRegistry) -> IndexSource:
    from cloud.datasets.index import DatasetIndex
    from cloud.retrain.data import IndexSource

    return IndexSource(DatasetIndex(registry.engine, cfg.datasets.root,
                                    val_fraction=cfg.datasets.val_fraction))


def _say(message: str) -> None:
    print(f"[retrain] {message}", flush=True)


def _flag_error(err: Any) -> str:
    flag = "--" + "-".join(str(p) for p in err["loc"]).replace("_", "-")
    return f"{flag}: {err['msg']}"


def run_retrain(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from cloud.config import load_config
    from cloud.errors import CloudError
    from cloud.registry.open import open_registry
    from cloud.retrain.pipeline import retrain

    try:
        cfg = load_config(args.config)
        overrides = {k: getattr(args, k) for k in TRAINING_FLAGS if getattr(args, k) is not None}
        try:
            training = cfg.retrain.training.model_validate(
                cfg.retrain.training.model_dump() | overrides)
        except ValidationError as e:
            print(f"error: {'; '.join(_flag_error(err) for err in e.errors())}",
                  file=sys.stderr)
            return 2
        registry = open_registry(cfg.database, cfg.registry)
        result = retrain(registry, args.parent, args.data, training=training,
                         gate=cfg.retrain.gate, work_dir=cfg.retrain.work_dir,
                         datasets=_datasets(cfg, registry), progress=_say,
                         by=getpass.getuser())
    except CloudError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    entry, report = result.candidate, result.report
    print(f"{entry.ref}: {entry.state} (gate {'passed' if report.passed else 'refused'}); "
          f"report {entry.gate_report_path}; log {result.run_dir / 'retrain.log'}")
    for reason in report.reasons:
        print(f"  - {reason}")
    return 0 if report.passed else 1


def run_worker(args: argparse.Namespace) -> int:
    from cloud.cli_models import open_fleet_store
    from cloud.config import load_config
    from cloud.errors import CloudError
    from cloud.registry.open import open_registry
    from cloud.retrain.requests import RetrainQueue
    from cloud.retrain.worker import RetrainWorker, utc_now

    try:
        cfg = load_config(args.config)
        registry = open_registry(cfg.database, cfg.registry)
        store = open_fleet_store(cfg)
    except CloudError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    queue = RetrainQueue(registry.engine, min_interval_h=cfg.retrain.min_interval_h)
    worker = RetrainWorker(queue, registry, cfg.retrain, store.lines if store else list,
                           datasets=_datasets(cfg, registry), progress=_say)
    try:
        if args.once:
            worker.schedule(utc_now())
            worker.expire(utc_now())
            while worker.run_once() is not None:
                pass
            return 0
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        return worker.run(stop, utc_now)
    except CloudError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if store is not None:
            store.close()
