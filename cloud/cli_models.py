"""`lineguard cloud models list|show|promote|import`: the model registry from the
command line. Every command reads the cloud config (`database:`, `registry:`, and the
fleet store for where each model runs)."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from cloud.config import CloudConfig
from cloud.fleet import FleetStore
from cloud.fleet.views import LineView
from cloud.registry import ModelEntry, ModelRef, ModelRegistry, RegistryLineage
from protocol.cliargs import HelpFormatter


def model_ref_arg(text: str) -> ModelRef:
    """argparse type of MODEL@VERSION arguments (the error says the expected form)."""
    try:
        return ModelRef.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_models_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `models` and its subcommands on the `lineguard cloud` parser."""
    help_ = "the model registry: list, show, promote (approve), import"
    models = sub.add_parser("models", help=help_, description=help_,
                            formatter_class=HelpFormatter)
    msub = models.add_subparsers(dest="models_cmd", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        p = msub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)
        p.add_argument("--config", type=Path, required=True, help="cloud YAML config file")
        return p

    ls = command("list", "every registered model with its state, gate and lines")
    ls.add_argument("--name", help="only this model name")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    sh = command("show", "one model: lineage, gate outcome, history, where it runs")
    sh.add_argument("model", type=model_ref_arg, metavar="MODEL@VERSION",
                    help="the registered model to show")
    pr = command("promote", "approve a candidate whose gate passed (an engineer's decision)")
    pr.add_argument("model", type=model_ref_arg, metavar="MODEL@VERSION",
                    help="the candidate to approve")
    pr.add_argument("--reason", required=True, help="why (kept in the model's history)")
    pr.add_argument("--by", default=None, help="who approves (default: the login name)")
    im = command("import", "register an existing bundle directory (e.g. a production model)")
    im.add_argument("bundle", type=Path, help="bundle directory")
    im.add_argument("--weights", type=Path,
                    help="its Ultralytics .pt (needed to fine-tune it later)")
    im.add_argument("--holdout", metavar="DATASET@VERSION|PATH",
                    help="the dataset whose val split is this model's holdout (the gate "
                    "evaluates its children there)")
    im.add_argument("--state", choices=["candidate", "approved"], default="candidate",
                    help="approved: an engineer vouches for a model already in production")
    im.add_argument("--by", default=None, help="who imports (default: the login name)")


def open_fleet_store(cfg: CloudConfig) -> FleetStore | None:
    """The fleet store (where each model runs: the same cloud database). The one place
    the registry's commands open it."""
    from cloud.fleet import FleetStore

    return FleetStore(cfg.database, cfg.store)


def _lines(cfg: CloudConfig) -> list[LineView]:
    """The fleet store's lines, or none when there is no fleet store yet."""
    store = open_fleet_store(cfg)
    if store is None:
        return []
    try:
        return store.lines()
    finally:
        store.close()


def _summary(entry: ModelEntry, lines: list[LineView]) -> dict[str, object]:
    from cloud.registry.where import running_on

    return {
        "model": str(entry.ref), "label": entry.label, "state": entry.state,
        "gate_passed": entry.gate_passed, "parent": str(entry.parent) if entry.parent else None,
        "dataset": entry.dataset.ref if entry.dataset else None,
        "runs_on": running_on(lines, entry.name, entry.version),
        "created_at": entry.created_at.isoformat(),
    }


def _list(registry: ModelRegistry, cfg: CloudConfig, args: argparse.Namespace) -> int:
    entries = registry.list(args.name)
    lines = _lines(cfg)
    if args.json:
        for entry in entries:
            print(json.dumps(_summary(entry, lines)))
        return 0
    if not entries:
        print("no models registered")
        return 0
    print(f"{'MODEL':24} {'STATE':10} {'GATE':7} {'PARENT':20} {'LINES':>5}  LABEL")
    for entry in entries:
        s = _summary(entry, lines)
        gate = {None: "-", True: "passed", False: "failed"}[entry.gate_passed]
        runs = s["runs_on"]
        assert isinstance(runs, list)
        print(f"{entry.ref!s:24} {entry.state:10} {gate:7} {s['parent'] or '-':20} "
              f"{len(runs):>5}  {entry.label}")
    return 0


def _show(registry: ModelRegistry, cfg: CloudConfig, ref: ModelRef) -> int:
    from cloud.registry import GateReport
    from models.bundle import load_bundle

    entry = registry.get(ref.name, ref.version)
    s = _summary(entry, _lines(cfg))
    manifest = load_bundle(entry.bundle_dir, verify_files=False).manifest
    print(f"model      {entry.ref}  ({entry.label})")
    print(f"state      {entry.state} since {entry.state_changed_at.isoformat()}")
    print(f"source     {entry.source}")
    print(f"bundle     {entry.bundle_dir}")
    print(f"weights    {entry.weights_path or '- (none: cannot be fine-tuned)'}")
    print(f"parent     {s['parent'] or '-'}")
    ds = entry.dataset
    print(f"dataset    {f'{ds.ref} (fingerprint {ds.fingerprint[:16]}...)' if ds else '-'}")
    print(f"holdout    {entry.holdout or '-'}")
    lin = manifest.lineage
    print(f"code       {lin.code_revision or '-'}")
    if lin.training_config:
        print("training   " + ", ".join(f"{k}={v}" for k, v in sorted(
            lin.training_config.items()) if k not in {"data", "project"}))
    if manifest.metrics is not None:
        print(f"metrics    mAP50 {manifest.metrics.map50:.3f} on {manifest.metrics.dataset}")
    runs = s["runs_on"]
    assert isinstance(runs, list)
    print(f"runs on    {', '.join(runs) or '- (no line reports it)'}")
    if entry.gate_report_path is not None:
        report = GateReport.model_validate_json(entry.gate_report_path.read_text("utf-8"))
        print(f"gate       {'passed' if report.passed else 'REFUSED'}; report "
              f"{entry.gate_report_path.with_suffix('.html')}")
        for reason in report.reasons:
            print(f"           - {reason}")
    else:
        print("gate       not run")
    print("history")
    for change in registry.history(entry.name, entry.version):
        print(f"  {change.at.isoformat()}  {change.from_state or '-':9} -> {change.to_state:9} "
              f"by {change.by}: {change.reason}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    """Run a `models` subcommand; 2 on an error, with the message on stderr."""
    from cloud.config import load_config
    from cloud.errors import CloudError
    from cloud.registry.open import open_registry

    try:
        cfg = load_config(args.config)
        registry = open_registry(cfg.database, cfg.registry)
        if args.models_cmd == "list":
            return _list(registry, cfg, args)
        if args.models_cmd == "show":
            return _show(registry, cfg, args.model)
        by = args.by or getpass.getuser()
        if args.models_cmd == "promote":
            entry = registry.set_state(args.model.name, args.model.version, "approved",
                                       reason=args.reason, by=by)
            print(f"{entry.ref} is {entry.state}")
            return 0
        if args.models_cmd == "import":
            entry = registry.add(args.bundle, weights=args.weights, state=args.state,
                                 lineage=RegistryLineage(holdout=args.holdout),
                                 source=f"import: {args.bundle.resolve()}", by=by)
            print(f"registered {entry.ref} ({entry.label}) as {entry.state}")
            return 0
    except CloudError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    raise AssertionError(f"unknown models command {args.models_cmd}")
