"""`lineguard appliance export-labels DIR`: the operators' labels as an Ultralytics YOLO
dataset (see appliance/labels_export.py for the layout and the ground-truth rule).

    lineguard appliance export-labels DIR [--all] [--since 7d] [--drop-unreviewed]
                                          [--config FILE] [--data-dir DIR] [--json]

Exports the frames with labels not yet exported (`--all`: every labelled frame again;
`--since`: only labels made within that window), with the configured bundle's class
names, then marks those labels exported (their images may be evicted again). DIR must
not exist or be empty. Opens the store as its one writer: stop the appliance first.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from appliance.cli_users import open_store_exclusive
from appliance.config import load_config
from appliance.labels_export import export_labels
from models.bundle import MANIFEST, open_bundle
from models.manifest import parse_manifest
from protocol.cliargs import HelpFormatter, add_logging_arguments, duration_s


def bundle_classes(path: Path, max_unpacked_bytes: int) -> list[str]:
    """The class names of a bundle directory or .tar (unpacked into a temporary folder
    that is removed afterwards). Raises ModelError."""
    if path.is_dir():
        return list(parse_manifest(path / MANIFEST).classes)
    with tempfile.TemporaryDirectory(prefix="lineguard-labels-") as work:
        bundle = open_bundle(path, Path(work) / "bundle", max_unpacked_bytes=max_unpacked_bytes)
        return list(bundle.manifest.classes)


def export(args: argparse.Namespace) -> int:
    overrides = {} if args.data_dir is None else {"data_dir": str(args.data_dir)}
    cfg = load_config(args.config, overrides)
    classes = bundle_classes(cfg.model.bundle, cfg.model.max_unpacked_bytes)
    since = None if args.since is None else time.time() - args.since
    store = open_store_exclusive(cfg)
    try:
        result = export_labels(store, args.dir, classes, include_all=args.all, since=since,
                               keep_unreviewed=not args.drop_unreviewed)
    finally:
        store.stop()
    if args.json:
        print(json.dumps({"dir": str(result.out_dir), "frames": result.frames,
                          "boxes": result.boxes, "labels_marked": result.labels_marked,
                          "skipped": result.skipped}, sort_keys=True))
        return 0
    print(f"exported {result.frames} frames ({result.boxes} boxes) to {result.out_dir}; "
          f"{result.labels_marked} labels marked exported")
    for frame_id, why in result.skipped.items():
        print(f"skipped {frame_id}: {why}")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `export-labels` to `lineguard appliance`."""
    p = sub.add_parser("export-labels", formatter_class=HelpFormatter, description=__doc__,
                       help="write the operators' labels as a YOLO dataset")
    p.add_argument("dir", type=Path, metavar="DIR", help="new (or empty) folder to write")
    p.add_argument("--all", action="store_true",
                   help="every labelled frame, also those exported before")
    p.add_argument("--since", type=duration_s, metavar="DURATION",
                   help="only labels made within this window: 90s, 30m, 1h, 7d")
    p.add_argument("--drop-unreviewed", action="store_true",
                   help="leave out detections without feedback (default: a labelled "
                        "frame's detections count as true unless rejected)")
    p.add_argument("--config", type=Path, help="YAML file (default: built-in defaults)")
    p.add_argument("--data-dir", type=Path,
                   help="override data_dir (where the store is) (default: the config's)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    add_logging_arguments(p, default_level="warning")
