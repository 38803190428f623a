"""`lineguard cloud`: the companion service's commands."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

# cloud.train's PICO_YAML, spelled out so that `collect` and `serve` never import the
# training stack (cv2, models; torch lazily) just to build the parser.
_PICO_YAML = Path(__file__).resolve().parent / "model_cfg" / "lineguard-pico.yaml"


def _train(args: argparse.Namespace) -> int:
    from cloud.train import TrainConfig, TrainingError, train_detector
    from cloud.ultralytics_env import UltralyticsUnavailable
    from models.errors import ModelError

    cfg = TrainConfig(
        data_yaml=args.data, out_bundle=args.out, name=args.name, version=args.version,
        label=args.label, model=args.model, epochs=args.epochs, imgsz=args.imgsz,
        batch=args.batch, seed=args.seed, workers=args.workers, patience=args.patience,
        torch_threads=args.threads, holdout_yaml=args.holdout, work_dir=args.work_dir,
        parent_version=args.parent_version,
    )
    try:
        bundle = train_detector(cfg, progress=lambda m: print(f"[train] {m}", flush=True),
                                trained_weights=args.trained_weights)
    except (TrainingError, UltralyticsUnavailable, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = bundle.manifest.metrics
    print(f"bundle {bundle.root} version {bundle.manifest.version}"
          + (f": holdout mAP50 {m.map50:.3f} mAP50-95 {m.map50_95:.3f}" if m else ""))
    return 0


def _collect(config_path: Path) -> int:
    from cloud.collector import Collector
    from cloud.config import load_config
    from cloud.errors import CloudError, ConfigError
    from cloud.fleet import FleetStore

    try:
        cfg = load_config(config_path)
        if cfg.collector is None:
            raise ConfigError(f"{config_path}: no `collector` section")
        password = cfg.collector.broker.secret()
        store = FleetStore(cfg.store)
    except CloudError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        return Collector(cfg.collector, store, password=password).run(stop)
    except CloudError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        store.close()


def _serve(config_path: Path, host: str | None, port: int | None) -> int:
    import uvicorn

    from cloud.api import create_app
    from cloud.config import load_config
    from cloud.errors import CloudError, ConfigError
    from cloud.fleet import FleetStore

    try:
        cfg = load_config(config_path)
        if cfg.api is None:
            raise ConfigError(f"{config_path}: no `api` section")
        token = cfg.api.secret()
        store = FleetStore(cfg.store)
    except CloudError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # uvicorn handles SIGTERM / SIGINT itself (finishes requests, then returns), and
    # afterwards re-raises the signal to the handler it found: ours, so that an orderly
    # stop exits 0 like every other command rather than dying of the re-raised signal.
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    try:
        app = create_app(store, token)
        uvicorn.run(app, host=host or cfg.api.host, port=port or cfg.api.port,
                    log_config=None, access_log=False)
    finally:
        store.close()
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lineguard cloud", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train a detector (Ultralytics, offline) into a bundle")
    tr.add_argument("--data", type=Path, required=True, help="YOLO data.yaml to train on")
    tr.add_argument("--holdout", type=Path, help="data.yaml whose val split gives the metrics")
    tr.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    tr.add_argument("--name", default="detector")
    tr.add_argument("--version", type=int, default=1)
    tr.add_argument("--label", default="")
    tr.add_argument("--parent-version", type=int)
    tr.add_argument("--model", default=str(_PICO_YAML),
                    help="model YAML (default: the demo's YOLO11 pico) or our own .pt weights")
    tr.add_argument("--trained-weights", type=Path,
                    help="best.pt of an earlier run with the same arguments: skip to export")
    tr.add_argument("--epochs", type=int, default=40)
    tr.add_argument("--imgsz", type=int, default=256)
    tr.add_argument("--batch", type=int, default=16)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--workers", type=int, default=0)
    tr.add_argument("--patience", type=int, default=100)
    tr.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    tr.add_argument("--work-dir", type=Path, default=Path("runs/train"))
    co = sub.add_parser("collect", help="collect every line's MQTT telemetry into the fleet store")
    co.add_argument("--config", type=Path, required=True, help="cloud YAML config file")
    se = sub.add_parser("serve", help="serve the fleet API (FastAPI, uvicorn)")
    se.add_argument("--config", type=Path, required=True, help="cloud YAML config file")
    se.add_argument("--host", help="override api.host (default 127.0.0.1)")
    se.add_argument("--port", type=int, help="override api.port")
    args = parser.parse_args(argv)
    if args.cmd == "train":
        return _train(args)
    if args.cmd == "collect":
        return _collect(args.config)
    if args.cmd == "serve":
        return _serve(args.config, args.host, args.port)
    parser.error(f"unknown command {args.cmd}")
    return 2
