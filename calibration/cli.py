"""`lineguard calibration`: camera, scale and decision-threshold calibration.

- ``camera IMAGES_DIR --board chessboard:9x6 --square-mm 10 --out camera.json``
- ``scale IMAGE --camera camera.json --board ... --square-mm ... [--camera-height-mm H]
  [--out scale.json]``
- ``thresholds BUNDLE DATA_YAML --target-miss-rate 0.01 [--per-class] --out BUNDLE_OUT``

Bad input is one ``error: ...`` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from calibration.camera import calibrate_camera, list_images, parse_board, read_grey
from calibration.camera_model import load_camera, write_camera
from calibration.errors import CalibrationError
from calibration.scale import measure_scale
from protocol.atomic import atomic_write_text
from protocol.cliargs import (
    HelpFormatter,
    add_logging_arguments,
    comma_list,
    configure_logging_from,
    positive_int,
)


def _board_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--board", required=True,
                   help="chessboard:COLSxROWS (inner corners) or charuco:COLSxROWS (squares)")
    p.add_argument("--square-mm", type=float, required=True, help="square side in mm")
    p.add_argument("--marker-mm", type=float, default=None,
                   help="ChArUco marker side in mm (default: 0.75 x square)")
    p.add_argument("--aruco-dict", default="DICT_4X4_50", help="ChArUco marker dictionary")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lineguard calibration", formatter_class=HelpFormatter,
        description="camera intrinsics and distortion, mm per pixel, decision thresholds")
    sub = parser.add_subparsers(dest="cmd", required=True)
    cam = sub.add_parser("camera", formatter_class=HelpFormatter,
                         help="calibrate a camera from board views -> camera.json")
    cam.add_argument("images_dir", type=Path, help="folder of board views (png, jpg, ...)")
    _board_args(cam)
    cam.add_argument("--out", type=Path, required=True, help="camera.json to write")
    cam.add_argument("--min-views", type=positive_int, default=6, help="usable views needed")
    cam.add_argument("--skip-bad", action="store_true",
                     help="skip views without a board instead of refusing the set")
    cam.add_argument("--include", default="",
                     help="only files whose name starts with this prefix (e.g. view_)")
    add_logging_arguments(cam, default_level="warning")
    sc = sub.add_parser("scale", formatter_class=HelpFormatter,
                        help="mm per pixel from the board lying on the conveyor")
    sc.add_argument("image", type=Path, help="one view of the board flat on the conveyor")
    sc.add_argument("--camera", type=Path, required=True, help="camera.json of this camera")
    _board_args(sc)
    sc.add_argument("--camera-height-mm", type=float, default=None,
                    help="measured camera-to-conveyor distance: checks --square-mm")
    sc.add_argument("--out", type=Path, default=None, help="scale JSON to write")
    add_logging_arguments(sc, default_level="warning")
    th = sub.add_parser("thresholds", formatter_class=HelpFormatter,
                        help="score thresholds for a target miss rate -> new bundle version")
    th.add_argument("bundle", type=Path, help="bundle directory or .tar")
    th.add_argument("data_yaml", type=Path, help="labelled validation set (Ultralytics yaml)")
    th.add_argument("--target-miss-rate", type=float, required=True,
                    help="largest share of defective parts judged pass, e.g. 0.01")
    th.add_argument("--per-class", action="store_true",
                    help="one threshold per class (default: one for every class)")
    th.add_argument("--split", default="val", help="dataset split")
    th.add_argument("--out", type=Path, required=True, help="new bundle directory")
    th.add_argument("--report", type=Path, default=None,
                    help="report folder (default: OUT.report beside the bundle)")
    th.add_argument("--batch", type=positive_int, default=8, help="inference batch size")
    th.add_argument("--providers", type=comma_list, default=None, metavar="NAME[,NAME...]",
                    help="ONNX Runtime providers, e.g. cuda,cpu (default: best available)")
    add_logging_arguments(th, default_level="warning")
    return parser


def _camera(args: argparse.Namespace) -> int:
    board = parse_board(args.board, args.square_mm, args.marker_mm, args.aruco_dict)
    images = [p for p in list_images(args.images_dir) if p.name.startswith(args.include)]
    if not images:
        raise CalibrationError(f"{args.images_dir}: no images start with {args.include!r}")
    camera = calibrate_camera(images, board, min_views=args.min_views, skip_bad=args.skip_bad)
    write_camera(args.out, camera)
    print(f"{args.out}: fx {camera.fx:.2f} fy {camera.fy:.2f} cx {camera.cx:.2f} "
          f"cy {camera.cy:.2f} dist {[round(d, 5) for d in camera.dist]} rms "
          f"{camera.rms_px:.3f} px from {len(camera.views)} views, sha256 "
          f"{camera.sha256[:16]}..")
    return 0


def _scale(args: argparse.Namespace) -> int:
    board = parse_board(args.board, args.square_mm, args.marker_mm, args.aruco_dict)
    camera = load_camera(args.camera)
    if not args.image.is_file():
        raise CalibrationError(f"{args.image}: no such image")
    found = measure_scale(read_grey(args.image), camera, board, name=args.image.name,
                          camera_height_mm=args.camera_height_mm)
    result = {"format": "lineguard.scale/1", "mm_per_px": found.scale.mm_per_px,
              "mm_per_px_x": found.scale.mm_per_px_x, "mm_per_px_y": found.scale.mm_per_px_y,
              "distance_mm": found.distance_mm, "tilt_deg": found.tilt_deg,
              "camera_sha256": camera.content_hash()}
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"{args.image.name}: {found.scale.mm_per_px:.5f} mm/px (x {found.scale.mm_per_px_x:.5f}"
          f", y {found.scale.mm_per_px_y:.5f}); board {found.distance_mm:.1f} mm away, tilted "
          f"{found.tilt_deg:.1f} deg")
    return 0


def _thresholds(args: argparse.Namespace) -> int:
    # lazily: onnxruntime and the models package load only for this command
    from calibration.threshold_run import (
        ThresholdRun,
        choose_all,
        score_parts,
        temp_bundle_dir,
        write_report,
        write_thresholds_bundle,
    )
    from models.bundle import open_bundle
    from models.evaluate import load_data_yaml

    if not 0 < args.target_miss_rate < 1:
        raise CalibrationError(f"--target-miss-rate {args.target_miss_rate}: must be in (0, 1)")
    dataset = load_data_yaml(args.data_yaml)
    with temp_bundle_dir() as tmp:
        bundle = open_bundle(args.bundle, Path(tmp) / "bundle")
        parts = score_parts(bundle, dataset, args.split, args.per_class,
                            batch_size=args.batch, providers=args.providers)
        chosen = choose_all(parts, args.target_miss_rate)
        run = ThresholdRun(args.target_miss_rate, args.per_class, args.split,
                           len(parts[0].scores), chosen)
        new = write_thresholds_bundle(bundle, args.out, run, dataset_label=dataset.label,
                                      providers=args.providers)
    report_dir = args.report or args.out.with_name(args.out.name + ".report")
    m = new.manifest
    html = write_report(report_dir, run, parts, f"{m.name} v{m.version} thresholds")
    for t in chosen:
        lo, hi = t.miss_rate_ci
        print(f"{t.name}: threshold {t.threshold:.4f}; missed {t.misses}/{t.defective} "
              f"({t.miss_rate:.2%}, 95% CI {lo:.2%}-{hi:.2%}); false rejects "
              f"{t.false_rejects}/{t.good} ({t.false_reject_rate:.2%})")
    print(f"wrote {m.name} v{m.version} to {args.out}; report {html}")
    return 0


def main(argv: list[str]) -> int:
    """Entry point of `lineguard calibration`; 0 ok, 2 bad input."""
    from models.errors import ModelError  # the thresholds command's errors

    args = build_parser().parse_args(argv)
    configure_logging_from(args)
    commands = {"camera": _camera, "scale": _scale, "thresholds": _thresholds}
    try:
        return commands[args.cmd](args)
    except (CalibrationError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
