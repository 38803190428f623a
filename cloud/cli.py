"""`lineguard cloud`: the companion service's commands."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from cloud.cli_db import add_db_commands, run_db
from cloud.cli_drift import add_drift_command, run_drift
from cloud.cli_models import add_models_command, run_models
from cloud.cli_release import RELEASE_COMMANDS, add_release_commands, run_release
from cloud.cli_retrain import add_retrain_commands, run_retrain, run_worker
from cloud.datasets.cli import add_commands as add_dataset_commands
from cloud.datasets.cli import run as run_dataset_command
from protocol.cliargs import (
    HelpFormatter,
    add_logging_arguments,
    add_nested_logging_arguments,
    comma_list,
    configure_logging_from,
    nonnegative_int,
    positive_int,
)

# cloud.training.train's PICO_YAML, spelled out so that `collect` and `serve` never import
# the training stack (cv2, models; torch lazily) just to build the parser.
_PICO_YAML = Path(__file__).resolve().parent / "training" / "model_cfg" / "lineguard-pico.yaml"


def _train(args: argparse.Namespace) -> int:
    from cloud.training.train import TrainConfig, TrainingError, train_detector
    from cloud.training.ultralytics_env import UltralyticsUnavailable
    from models.errors import ModelError

    cfg = TrainConfig(
        data_yaml=args.data, out_bundle=args.out, name=args.name, version=args.version,
        label=args.label, model=args.model, epochs=args.epochs, imgsz=args.imgsz,
        batch=args.batch, seed=args.seed, workers=args.workers, patience=args.patience,
        torch_threads=args.threads, holdout_yaml=args.holdout, work_dir=args.work_dir,
        parent_version=args.parent_version, optimizer=args.optimizer, lr0=args.lr0,
        warmup_epochs=args.warmup_epochs, close_mosaic=args.close_mosaic,
        serve_imgsz=args.serve_imgsz,
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
    from cloud.collector.workers import WorkerPool, run_collector
    from cloud.config import load_config
    from cloud.errors import CloudError, ConfigError
    from cloud.fleet import FleetStore

    try:
        cfg = load_config(config_path)
        if cfg.collector is None:
            raise ConfigError(f"{config_path}: no `collector` section")
        password = cfg.collector.broker.secret()
        FleetStore(cfg.database, cfg.store).close()  # migrate once, or fail here
    except CloudError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if cfg.collector.workers == 1:
        return run_collector(cfg.collector, cfg.database, cfg.store, password, stop)
    return WorkerPool(cfg.collector, cfg.database, cfg.store, password).run(stop)


def _serve(config_path: Path, host: str | None, port: int | None) -> int:
    import uvicorn

    from cloud.api import create_app
    from cloud.api.releases import ReleaseApi
    from cloud.config import load_config
    from cloud.datasets.service import upload_router
    from cloud.db import open_database
    from cloud.drift.store import DriftStore
    from cloud.errors import CloudError, ConfigError
    from cloud.fleet import FleetStore
    from cloud.registry.open import open_registry
    from cloud.release.open import open_release

    try:
        cfg = load_config(config_path)
        if cfg.api is None:
            raise ConfigError(f"{config_path}: no `api` section")
        token = cfg.api.secret()
        # One engine (one pool, one schema check) for every component served here;
        # each component leaves it open and it is disposed of below.
        engine = open_database(cfg.database)
    except CloudError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        store = FleetStore(cfg.database, cfg.store, engine=engine)
        registry = open_registry(cfg.database, cfg.registry, engine=engine)
        side = open_release(cfg.database, cfg.release, engine=engine)
        release = ReleaseApi(side.store, cfg.release.repository_dir)
    except CloudError as e:
        engine.dispose()
        print(f"error: {e}", file=sys.stderr)
        return 2
    # uvicorn handles SIGTERM / SIGINT itself (finishes requests, then returns), and
    # afterwards re-raises the signal to the handler it found: ours, so that an orderly
    # stop exits 0 like every other command rather than dying of the re-raised signal.
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    try:
        # the drift monitor's alerts and windows (same database), with or without a
        # `drift:` section here: the monitor may run elsewhere
        app = create_app(store, token, public_docs=cfg.api.public_docs, registry=registry,
                         release=release, routers=[upload_router(cfg, engine)],
                         drift=DriftStore(engine))
        uvicorn.run(app, host=host or cfg.api.host, port=port or cfg.api.port,
                    log_config=None, access_log=False)
    finally:
        engine.dispose()
    return 0


def _check_config(config_path: Path, read_secrets: bool) -> int:
    from cloud.config import load_config
    from cloud.errors import CloudError

    try:
        cfg = load_config(config_path)
        if read_secrets and cfg.collector is not None:
            cfg.collector.broker.secret()
        if read_secrets and cfg.api is not None:
            cfg.api.secret()
    except CloudError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    sections = [name for name in ("collector", "api") if getattr(cfg, name) is not None]
    from sqlalchemy.engine import make_url

    where = make_url(cfg.database.url).render_as_string(hide_password=True)
    print(f"config ok: database {where}; sections: "
          f"{', '.join(sections) or 'none (collect and serve need collector and api)'}"
          + ("" if read_secrets else "; secret files not read"))
    return 0


def _reference() -> int:
    from cloud.config import CloudConfig
    from protocol.configref import config_reference

    print(config_reference(CloudConfig, "Cloud configuration",
                           "lineguard cloud config-reference"), end="")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    import tempfile

    from cloud.errors import CloudError
    from cloud.training.quantize import load_calibration_frames, quantize_bundle
    from cloud.training.throughput import measure_throughput
    from models.bundle import open_bundle
    from models.errors import ModelError
    from models.evaluate import evaluate, load_data_yaml
    from models.manifest import Metrics
    from models.preprocess import preprocess_batch

    def say(msg: str) -> None:
        print(f"[quantize] {msg}", flush=True)

    try:
        with tempfile.TemporaryDirectory(prefix="lineguard-quantize-") as work:
            src = open_bundle(args.bundle, Path(work))
            frames = load_calibration_frames(args.calib, args.calib_count, split=args.calib_split)
            say(f"{len(frames)} calibration frames from {args.calib}")
            dataset = load_data_yaml(args.eval) if args.eval else None
            int8 = quantize_bundle(
                src, args.out, frames, method=args.method, per_channel=args.per_channel,
                reduce_range=args.reduce_range, quant_format=args.format,
                activation_type=args.activation_type, weight_type=args.weight_type,
                exclude_head=args.exclude_head, nodes_to_exclude=args.exclude or (),
                rewrite_dfl=args.rewrite_dfl, label=args.label,
                eval_dataset=dataset, eval_split=args.split, progress=say)
            fp32: Metrics | None = src.manifest.metrics
            if dataset is None and fp32 is not None:
                say(f"no --eval: FP32 figures are the source manifest's ({fp32.dataset})")
            if dataset is not None:
                say(f"evaluating the FP32 model on {dataset.label}:{args.split}")
                fp32 = evaluate(src, dataset, args.split, providers=["cpu"])
            rows = []
            if args.bench_rounds > 0:
                m = src.manifest
                sample, _ = preprocess_batch(frames[:8], m.preprocess, (m.input.height,
                                                                        m.input.width))
                say(f"timing bare ONNX Runtime, {args.threads} threads, batch 1 and 8 "
                    f"({args.bench_rounds} interleaved rounds)")
                rows = measure_throughput({"FP32": src.model_path, "INT8": int8.model_path},
                                          sample, threads=args.threads, rounds=args.bench_rounds)
    except (CloudError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    q = int8.manifest.metrics
    print(f"bundle {int8.root}: {int8.manifest.name} version {int8.manifest.version} "
          f"variant int8 ({int8.manifest.label}) of {src.root}")
    print(f"{'':18}{'FP32':>10}{'INT8':>10}{'INT8 vs FP32':>16}")
    for title, key in (("mAP50", "map50"), ("mAP50-95", "map50_95")):
        a = getattr(fp32, key) if fp32 else None
        b = getattr(q, key) if q else None
        diff = f"{(b - a) * 100:+.2f} pt" if a is not None and b is not None else "-"
        print(f"{title:18}{_cell(a)}{_cell(b)}{diff:>16}")
    for bs in sorted({r.batch_size for r in rows}):
        f, i = (next(r for r in rows if r.batch_size == bs and r.model == n)
                for n in ("FP32", "INT8"))
        print(f"{f'images/s batch {bs}':18}{f.images_per_s:>10.1f}{i.images_per_s:>10.1f}"
              f"{f'x{i.ratio:.2f}':>16}")
    return 0


def _cell(value: float | None) -> str:
    return f"{value:>10.4f}" if value is not None else f"{'-':>10}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lineguard cloud", description=__doc__,
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    def command(name: str, help_: str, more: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_ + more,
                              formatter_class=HelpFormatter)

    tr = command("train", "train a detector (Ultralytics, offline, CPU) into a bundle",
                 ".\nEvery argument the bundle needs is checked before training starts.")
    tr.add_argument("--data", type=Path, required=True, help="YOLO data.yaml to train on")
    tr.add_argument("--holdout", type=Path,
                    help="data.yaml whose val split gives the metrics (default: --data's)")
    tr.add_argument("--out", type=Path, required=True,
                    help="bundle directory to write (must not exist or be empty)")
    tr.add_argument("--name", default="detector",
                    help="model name (letters, digits, '.', '_', '-')")
    tr.add_argument("--version", type=positive_int, default=1, help="model version")
    tr.add_argument("--label", default=None,
                    help="human label (default: <name>-<first 8 hex digits of the dataset "
                    "fingerprint>)")
    tr.add_argument("--parent-version", type=positive_int,
                    help="version this model was fine-tuned from (default: none)")
    tr.add_argument("--model", default=str(_PICO_YAML),
                    help="model YAML, or our own .pt weights to fine-tune (default: "
                    "lineguard-pico, the demo's YOLO11 at half yolo11n's width)")
    tr.add_argument("--trained-weights", type=Path,
                    help="best.pt of an earlier run with the same arguments: skip to export")
    tr.add_argument("--epochs", type=positive_int, default=40, help="training epochs")
    tr.add_argument("--imgsz", type=positive_int, default=256, help="training image size (px)")
    tr.add_argument("--serve-imgsz", type=positive_int,
                    help="input size of the bundle in px (default: --imgsz)")
    tr.add_argument("--batch", type=positive_int, default=16, help="images per batch")
    tr.add_argument("--seed", type=int, default=0, help="random seed (deterministic training)")
    tr.add_argument("--workers", type=nonnegative_int, default=0,
                    help="dataloader worker processes")
    tr.add_argument("--patience", type=nonnegative_int, default=100,
                    help="stop after N epochs without improvement")
    tr.add_argument("--optimizer", default="auto", help="Ultralytics optimizer, e.g. AdamW")
    tr.add_argument("--lr0", type=float,
                    help="initial learning rate (default: Ultralytics' for the optimizer)")
    tr.add_argument("--warmup-epochs", type=float, default=3.0, help="learning-rate warmup")
    tr.add_argument("--close-mosaic", type=nonnegative_int, default=10,
                    help="last N epochs without mosaic augmentation")
    tr.add_argument("--threads", type=positive_int, help="torch threads (default: all cores)")
    tr.add_argument("--work-dir", type=Path, default=Path("runs/train"),
                    help="Ultralytics' run directory (weights, staging)")
    add_db_commands(command)
    co = command("collect", "collect every line's MQTT telemetry into the fleet store")
    co.add_argument("--config", type=Path, required=True, help="cloud YAML config file")
    se = command("serve", "serve the fleet API (FastAPI, uvicorn)")
    se.add_argument("--config", type=Path, required=True, help="cloud YAML config file")
    se.add_argument("--host", help="override api.host (default: the config's)")
    se.add_argument("--port", type=positive_int, help="override api.port (default: the config's)")
    ck = command("check-config", "validate a cloud config file (and read its secret files)")
    ck.add_argument("--config", type=Path, required=True, help="cloud YAML config file")
    ck.add_argument("--skip-secrets", action="store_true",
                    help="do not read password_file / token_file (check on another machine)")
    command("config-reference",
            "print every config key with its default, unit and bounds (Markdown)")
    add_drift_command(sub)
    qu = command("quantize", "make an INT8 (static, calibrated) variant of a bundle",
                 ":\nsame name and version as the source, `variant: int8` in the manifest.")
    qu.add_argument("bundle", type=Path, help="FP32 bundle directory or .tar/.tar.gz")
    qu.add_argument("out", type=Path, help="INT8 bundle directory to write")
    qu.add_argument("--calib", type=Path, required=True,
                    help="calibration frames: a data.yaml (its --calib-split) or an image folder")
    qu.add_argument("--calib-count", type=positive_int, default=64, help="calibration frames")
    qu.add_argument("--calib-split", default="train", help="split of a --calib data.yaml")
    qu.add_argument("--eval", type=Path,
                    help="data.yaml to measure FP32 and INT8 mAP on (default: no measurement)")
    qu.add_argument("--split", default="val", help="split of --eval")
    qu.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax",
                    help="calibration method")
    qu.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True,
                    help="one weight scale per output channel")
    qu.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=True,
                    help="7-bit weights: no u8s8 saturation on CPUs without VNNI")
    qu.add_argument("--format", choices=["qdq", "qoperator"], default="qdq",
                    help="quantized graph format")
    qu.add_argument("--activation-type", choices=["uint8", "int8"], default="uint8",
                    help="activation integer type")
    qu.add_argument("--weight-type", choices=["int8", "uint8"], default="int8",
                    help="weight integer type")
    qu.add_argument("--exclude-head", choices=["decode", "output", "none"], default="decode",
                    help="head nodes kept float (decode: everything after the last convs)")
    qu.add_argument("--exclude", type=comma_list, metavar="NAME[,NAME...]",
                    help="more node names kept float, comma-separated (default: none)")
    qu.add_argument("--rewrite-dfl", action=argparse.BooleanOptionalAction, default=True,
                    help="compute the YOLO DFL softmax decode without transposes (same result)")
    qu.add_argument("--label", help="label of the variant (default: source's + '-int8')")
    qu.add_argument("--threads", type=positive_int, default=2, help="ORT threads for the timing")
    qu.add_argument("--bench-rounds", type=nonnegative_int, default=5,
                    help="timing rounds (0: no timing)")
    add_models_command(sub)
    add_retrain_commands(sub)
    add_dataset_commands(command)
    add_release_commands(sub)
    for cmd in sub.choices.values():
        add_logging_arguments(cmd)
        # the leaves of a group (`db upgrade`, `release publish`) take them too
        add_nested_logging_arguments(cmd)
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging_from(args)
    if args.cmd == "train":
        return _train(args)
    if args.cmd == "collect":
        return _collect(args.config)
    if args.cmd == "serve":
        return _serve(args.config, args.host, args.port)
    if args.cmd == "db":
        return run_db(args)
    if args.cmd == "quantize":
        return _quantize(args)
    if args.cmd == "check-config":
        return _check_config(args.config, read_secrets=not args.skip_secrets)
    if args.cmd == "config-reference":
        return _reference()
    if args.cmd == "models":
        return run_models(args)
    if args.cmd == "retrain":
        return run_retrain(args)
    if args.cmd == "retrain-worker":
        return run_worker(args)
    if args.cmd in ("dataset", "line"):
        return run_dataset_command(args)
    if args.cmd in RELEASE_COMMANDS:
        return run_release(args)
    if args.cmd == "drift":
        return run_drift(args)
    parser.error(f"unknown command {args.cmd}")
    return 2
