"""`lineguard appliance report` and `lineguard appliance show`: the store's answers,
without SQL, from the store file of a config (read-only: safe while the appliance runs).

    lineguard appliance report [--config FILE] [--data-dir DIR] [--since 1h|all] [--json]
    lineguard appliance show PART_OR_FRAME [--config FILE] [--data-dir DIR] [--out FILE]
                                           [--json]

`report`: parts, pass, fail, uninspected by reason, yield and failed parts per defect
class, per station and for the line (see appliance.store.report for the counting
rules). `show`: the verdict of a frame id (`station:seq`) or of a part id (every
station's), and, where its image was kept, that image with the boxes, classes and
scores drawn, written to `--out`.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import cv2
import numpy as np

from appliance.config import ApplianceConfig, load_config
from appliance.errors import ApplianceError
from appliance.store.annotate import annotate
from appliance.store.report import (
    InspectionView,
    LineReport,
    Tally,
    find_inspections,
    line_report,
    open_store_reader,
)
from protocol.atomic import atomic_write_bytes
from protocol.cliargs import HelpFormatter, add_logging_arguments, duration_s


def _since(text: str) -> float | None:
    return None if text.strip().lower() == "all" else duration_s(text)


def _config(args: argparse.Namespace) -> ApplianceConfig:
    overrides = {} if args.data_dir is None else {"data_dir": str(args.data_dir)}
    return load_config(args.config, overrides)


def _utc(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} %"


def _tally_lines(name: str, t: Tally) -> list[str]:
    lines = [f"{name:<16} {t.parts:>9} {t.passed:>9} {t.failed:>9} {t.uninspected:>11}"
             f" {_pct(t.yield_pct):>8}"]
    if t.uninspected_by_reason:
        lines.append("  uninspected: " + ", ".join(
            f"{reason} {n}" for reason, n in t.uninspected_by_reason.items()))
    if t.failed_parts_by_class:
        lines.append("  failed parts by class: " + ", ".join(
            f"{name_} {n}" for name_, n in t.failed_parts_by_class.items()))
    return lines


def format_report(report: LineReport, store: Path) -> str:
    """The report as text for people."""
    since = "the first record" if report.since is None else _utc(report.since)
    lines = [f"store {store}: parts judged from {since} to {_utc(report.until)}", "",
             f"{'station':<16} {'parts':>9} {'pass':>9} {'fail':>9} {'uninspected':>11}"
             f" {'yield':>8}"]
    for name, tally in report.stations.items():
        lines += _tally_lines(name, tally)
    if len(report.stations) != 1:
        lines += _tally_lines("line", report.total)
    if not report.stations:
        lines.append("(no parts in this window)")
    return "\n".join(lines)


def report(args: argparse.Namespace) -> int:
    cfg = _config(args)
    until = time.time()
    since = None if args.since is None else until - args.since
    conn = open_store_reader(cfg.store.path)
    try:
        result = line_report(conn, since, until)
    finally:
        conn.close()
    if args.json:
        print(json.dumps(result.as_dict(), sort_keys=True))
    else:
        print(format_report(result, cfg.store.path))
    return 0


def _out_path(out: Path | None, view: InspectionView, several: bool) -> Path:
    if out is None:
        return Path(re.sub(r"[^A-Za-z0-9._-]", "_", view.frame_id) + ".annotated.jpg")
    if several:
        return out.with_name(f"{out.stem}-{view.station}{out.suffix or '.jpg'}")
    return out


def write_annotated(view: InspectionView, out: Path) -> None:
    """Draw `view`'s detections on its kept image and write it to `out` (JPEG, or the
    format of `out`'s suffix). Raises ApplianceError if the image cannot be read or
    written."""
    if view.image_path is None:
        raise ApplianceError(f"no image kept for {view.frame_id}")
    image = cv2.imread(view.image_path, cv2.IMREAD_COLOR)
    if image is None:
        raise ApplianceError(f"cannot read {view.image_path}")
    detections = [(d["class_name"], d["score"], d["box_xyxy"]) for d in view.defects]
    drawn = annotate(np.asarray(image, dtype=np.uint8), detections)
    ok, buf = cv2.imencode(out.suffix or ".jpg", drawn)
    if not ok:
        raise ApplianceError(f"cannot encode {out.suffix or '.jpg'} for {out}")
    try:
        atomic_write_bytes(out, buf.tobytes())
    except OSError as e:
        raise ApplianceError(f"cannot write {out}: {e}") from e


def _describe(view: InspectionView) -> list[str]:
    verdict = view.verdict if view.reason is None else f"{view.verdict}: {view.reason}"
    part = f" (part {view.part_id})" if view.part_id else ""
    latency = "" if view.total_ms is None else f", {view.total_ms:.1f} ms"
    lines = [f"frame {view.frame_id}{part}, station {view.station}: {verdict}",
             f"  judged {_utc(view.judged_at)} by model {view.model_version or 'none'}"
             f"{latency}"]
    for d in view.defects:
        x1, y1, x2, y2 = d["box_xyxy"]
        size = d["size_mm_wh"]
        mm = "" if size is None else f", {size[0]:.1f} x {size[1]:.1f} mm"
        lines.append(f"  {d['class_name']} {d['score']:.2f} at x {x1:.0f}-{x2:.0f}, "
                     f"y {y1:.0f}-{y2:.0f} px{mm}")
    return lines


def show(args: argparse.Namespace) -> int:
    cfg = _config(args)
    conn = open_store_reader(cfg.store.path)
    try:
        views = find_inspections(conn, args.key, cfg.store.images.dir)
    finally:
        conn.close()
    if not views:
        raise ApplianceError(f"no frame or part {args.key!r} in {cfg.store.path}")
    written: dict[str, str | None] = {}
    for view in views:
        out = _out_path(args.out, view, len(views) > 1)
        if view.image_path is None:
            written[view.frame_id] = None
            continue
        write_annotated(view, out)
        written[view.frame_id] = str(out)
    if args.json:
        print(json.dumps([{**v.as_dict(), "written": written[v.frame_id]} for v in views],
                         sort_keys=True))
        return 0
    for view in views:
        print("\n".join(_describe(view)))
        path = written[view.frame_id]
        print(f"  image with boxes: {path}" if path else
              "  no image kept (every fail is kept while the quota allows; pass and "
              "uninspected frames are a sample: store.images.keep_pass_fraction)")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `report` and `show` subcommands to `lineguard appliance`."""
    rep = sub.add_parser("report", formatter_class=HelpFormatter,
                         help="parts, pass, fail, uninspected, yield and fails per class, "
                              "per station, from the store")
    rep.add_argument("--since", type=_since, default=24 * 3600.0, metavar="DURATION",
                     help="the window before now: 90s, 30m, 1h, 7d, or `all` "
                          "(default: 24h)")
    sh = sub.add_parser("show", formatter_class=HelpFormatter,
                        help="a part's or frame's verdict; writes its image with the boxes")
    sh.add_argument("key", metavar="PART_OR_FRAME",
                    help="a frame id (station:seq) or a part id (all its stations)")
    sh.add_argument("--out", type=Path,
                    help="where to write the image with the boxes drawn (default: "
                         "FRAME.annotated.jpg here; several stations: -STATION added)")
    for parser in (rep, sh):
        parser.add_argument("--config", type=Path,
                            help="YAML file (default: built-in defaults)")
        parser.add_argument("--data-dir", type=Path,
                            help="override data_dir (where the store is) (default: the "
                                 "config's)")
        parser.add_argument("--json", action="store_true", help="print JSON on stdout")
        add_logging_arguments(parser, default_level="warning")
