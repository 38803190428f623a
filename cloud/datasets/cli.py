"""`lineguard cloud dataset ...` and `lineguard cloud line token`: the dataset index and
the lines' sample inbox from the command line. Errors print one line and exit 2."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from protocol.cliargs import HelpFormatter, comma_list

if TYPE_CHECKING:
    from cloud.config import CloudConfig
    from cloud.datasets.content import DatasetVersion
    from cloud.datasets.inbox import SampleInbox
    from cloud.datasets.index import DatasetIndex

_LINE = re.compile(r"^([a-z0-9][a-z0-9_-]{0,62})/([a-z0-9][a-z0-9_-]{0,62})$")

Command = Callable[..., argparse.ArgumentParser]


def site_line(text: str) -> tuple[str, str]:
    """`SITE/LINE` -> (site, line) (an argparse type)."""
    match = _LINE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected SITE/LINE (lowercase letters, digits, '_' or '-'), got {text!r}")
    return match.group(1), match.group(2)


def add_commands(command: Command) -> None:
    """Add `dataset` and `line` to `lineguard cloud` (`command(name, help)` makes a
    subparser)."""
    ds = command("dataset", "dataset versions: import, union, list, show, materialize; "
                 "the lines' sample inbox")
    sub = ds.add_subparsers(dest="dataset_cmd", required=True)

    def sc(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        p.add_argument("--config", type=Path,
                       help="cloud YAML config (database, datasets.root); default: the "
                       "built-in defaults, relative to the working directory")
        return p

    im = sc("import", "import an Ultralytics YOLO dataset as a new version")
    im.add_argument("path", type=Path, help="data.yaml, or a folder with data.yaml or images/")
    im.add_argument("--name", required=True, help="dataset name")
    im.add_argument("--split", choices=["hash", "keep"], default="hash",
                    help="hash: train/val by image hash (stable across versions, default); "
                    "keep: the dataset's own split")
    im.add_argument("--classes", type=comma_list, metavar="NAME[,NAME...]",
                    help="class names of a folder without data.yaml or classes.txt")
    im.add_argument("--drop-conflicting-duplicates", action="store_true",
                    help="leave out every copy of an image that appears twice with different "
                    "labels (or splits) instead of refusing the import; they are listed")
    un = sc("union", "a new version holding every image of other versions")
    un.add_argument("refs", type=comma_list, metavar="NAME@VERSION[,NAME...]",
                    help="the versions to join, comma-separated (NAME alone: its latest)")
    un.add_argument("--name", required=True, help="name of the new version")
    ls = sc("list", "every dataset version")
    ls.add_argument("name", nargs="?", help="only this dataset")
    sh = sc("show", "one version: fingerprint, parents, counts per split and class")
    sh.add_argument("ref", help="NAME, NAME@NUMBER or NAME@FINGERPRINT-PREFIX")
    sh.add_argument("--json", action="store_true", help="print the version as JSON")
    ma = sc("materialize", "write a version as a YOLO folder (data.yaml) to train on")
    ma.add_argument("ref", help="NAME[@VERSION]")
    ma.add_argument("out", type=Path, help="folder to write (must not exist or be empty)")
    ho = sc("holdout", "write a version's val split alone as a YOLO folder")
    ho.add_argument("ref", help="NAME[@VERSION]")
    ho.add_argument("out", type=Path, nargs="?",
                    help="folder to write (default: <datasets.root>/holdout/<fingerprint>)")
    ib = sc("inbox", "samples uploaded by the lines, waiting to be accepted")
    ib.add_argument("line", type=site_line, nargs="?", metavar="SITE/LINE",
                    help="list this line's samples (default: counts per line)")
    ac = sc("accept", "turn a line's inbox into a new dataset version")
    ac.add_argument("line", type=site_line, metavar="SITE/LINE", help="the line whose inbox")
    ac.add_argument("--into", required=True, help="dataset name of the new version")
    ac.add_argument("--base", help="version to add the samples to (default: the latest "
                    "version of --into, if any)")
    ac.add_argument("--include-predictions", action="store_true",
                    help="samples without operator labels take their predictions as labels "
                    "(default: they are skipped and stay in the inbox)")
    ac.add_argument("--min-score", type=float, default=0.0,
                    help="the lowest prediction score taken as a label (predictions are the "
                    "line's detections, after its own thresholds)")
    ac.add_argument("--drop-unreviewed", action="store_true",
                    help="on operator-labelled samples, only what the operator confirmed or "
                    "drew (default: predictions nobody reviewed count, as in the panel's "
                    "export)")
    ac.add_argument("--classes", type=comma_list, metavar="NAME[,NAME...]",
                    help="class names when --into is a new dataset and there is no --base")
    gc = sc("gc", "delete image objects no dataset or sample refers to")
    gc.add_argument("--older-than-s", type=float, default=3600.0,
                    help="only objects older than this (an import in progress writes its "
                    "objects first)")
    ln = command("line", "per-line credentials for the sample upload endpoint")
    lsub = ln.add_subparsers(dest="line_cmd", required=True)
    tk = lsub.add_parser("token", help="make a new upload token for a line (printed once; "
                         "replaces the line's earlier token)", formatter_class=HelpFormatter)
    tk.add_argument("line", type=site_line, metavar="SITE/LINE", help="the line")
    tk.add_argument("--config", type=Path, help="cloud YAML config (database)")


def run(args: argparse.Namespace) -> int:
    """Run a `dataset` or `line` command; the exit status."""
    from cloud.errors import CloudError

    try:
        index, cfg = _open(args.config)
        try:
            if args.cmd == "line":
                return _token(index, args)
            return _dataset(index, cfg, args)
        finally:
            index.engine.dispose()
    except CloudError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _open(config_path: Path | None) -> tuple[DatasetIndex, CloudConfig]:
    from cloud.config import CloudConfig, load_config
    from cloud.datasets.service import open_index

    cfg = load_config(config_path) if config_path is not None else CloudConfig()
    return open_index(cfg), cfg


def _token(index: DatasetIndex, args: argparse.Namespace) -> int:
    from cloud.datasets.inbox import SampleInbox

    site, line = args.line
    token = SampleInbox(index).issue_token(site, line)
    print(f"upload token for {site}/{line} (shown once; store it in the line's "
          f"uploads.token_file):\n{token}")
    return 0


def _counts_line(version: DatasetVersion) -> str:
    c = version.counts
    boxes = sum(sum(per.values()) for per in c.boxes.values())
    return (f"{version.images} images (train {c.images.get('train', 0)}, "
            f"val {c.images.get('val', 0)}), {boxes} boxes")


def _dataset(index: DatasetIndex, cfg: CloudConfig, args: argparse.Namespace) -> int:
    from cloud.datasets.inbox import SampleInbox

    cmd = args.dataset_cmd
    if cmd == "import":
        v = index.import_yolo(args.path, args.name, split=args.split, classes=args.classes,
                              drop_conflicts=args.drop_conflicting_duplicates)
        print(f"{v.ref} {v.fingerprint[:12]}: {_counts_line(v)}; classes "
              f"{', '.join(v.classes)}; split {v.split_rule}")
        if "(left out" in v.source:
            print(v.source[v.source.index("(left out") + 1:].rstrip(")"))
    elif cmd == "union":
        v = index.union(args.refs, args.name)
        print(f"{v.ref} {v.fingerprint[:12]}: {_counts_line(v)}; from {', '.join(v.parents)}")
    elif cmd == "list":
        versions = index.list(args.name)
        if not versions:
            print("no datasets")
        for v in versions:
            made = v.created_at.strftime("%Y-%m-%d %H:%M")
            print(f"{v.ref:<24} {v.fingerprint[:12]}  {_counts_line(v):<44} {made}  "
                  f"{v.source if not v.parents else 'from ' + ', '.join(v.parents)}")
    elif cmd == "show":
        _show(index.get(args.ref), as_json=args.json)
    elif cmd == "materialize":
        print(index.materialize(args.ref, args.out))
    elif cmd == "holdout":
        print(index.holdout(args.ref, args.out))
    elif cmd == "inbox":
        _inbox(SampleInbox(index, max_pixels=cfg.datasets.upload_max_pixels), args.line)
    elif cmd == "accept":
        site, line = args.line
        result = SampleInbox(index).accept(
            site, line, args.into, base=args.base,
            include_predictions=args.include_predictions, min_score=args.min_score,
            drop_unreviewed=args.drop_unreviewed,
            classes=args.classes)
        v = result.version
        print(f"{v.ref} {v.fingerprint[:12]}: {_counts_line(v)}; accepted {result.accepted} "
              f"sample(s) from {site}/{line}, {result.skipped} skipped (no operator labels)")
    elif cmd == "gc":
        removed = index.gc(older_than_s=args.older_than_s)
        print(f"removed {len(removed)} unreferenced object(s)")
    return 0


def _show(v: DatasetVersion, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({**v.model_dump(mode="json"), "ref": v.ref}, indent=2))
        return
    print(f"{v.ref}\n  fingerprint  {v.fingerprint}\n  created      {v.created_at.isoformat()}"
          f"\n  source       {v.source}\n  parents      {', '.join(v.parents) or '-'}"
          f"\n  split        {v.split_rule}\n  images       {_counts_line(v)}")
    width = max(len(c) for c in v.classes)
    print(f"  {'class':<{width}}  {'train':>7}  {'val':>7}   (boxes)")
    for c in v.classes:
        print(f"  {c:<{width}}  {v.counts.boxes['train'].get(c, 0):>7}  "
              f"{v.counts.boxes['val'].get(c, 0):>7}")


def _inbox(inbox: SampleInbox, line: tuple[str, str] | None) -> None:
    if line is None:
        counts = inbox.counts()
        if not counts:
            print("no samples")
        for (site, ln), per in sorted(counts.items()):
            print(f"{site}/{ln}: {per.get('inbox', 0)} waiting, {per.get('accepted', 0)} accepted")
        return
    entries = inbox.entries(*line)
    if not entries:
        print(f"{line[0]}/{line[1]}: the inbox is empty")
    for e in entries:
        print(f"{e.sample_id:<36} {e.reason:<15} {'labelled' if e.labelled else '-':<9} "
              f"{e.predictions:>3} pred {e.labels:>3} labels  {e.model:<20} "
              f"{e.captured_at.isoformat()}")
