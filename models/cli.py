"""``lineguard bundle``: verify, pack, unpack, inspect and wrap model bundles.

Every failure prints one line ``error: ...`` on stderr and exits with status 2;
success exits 0.
"""

from __future__ import annotations

import argparse
import ast
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import cv2
import numpy as np
import numpy.typing as npt

from models.bundle import Bundle, load_bundle, open_bundle, pack_bundle, unpack_bundle
from models.errors import ModelError
from models.golden import build_bundle, verify_golden
from models.manifest import Lineage, PostprocessSpec
from models.runtime import OnnxDetector, check_model_io
from protocol.cliargs import (
    HelpFormatter,
    add_logging_arguments,
    comma_list,
    configure_logging_from,
)

__all__ = ["build_parser", "main"]

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> _Parser:
    parser = _Parser(prog="lineguard bundle", description="Model bundle tools.",
                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, help_: str) -> _Parser:
        cmd: _Parser = sub.add_parser(name, help=help_, formatter_class=HelpFormatter)
        return cmd

    verify = command("verify", "check files, model IO and the golden set")
    verify.add_argument("bundle", type=Path, help="bundle directory or .tar/.tar.gz")
    verify.add_argument("--providers", type=comma_list, default=None, metavar="NAME[,NAME...]",
                        help="ONNX Runtime providers, comma-separated in preference order, "
                        "e.g. cpu or cuda,cpu (default: best available)")

    pack = command("pack", "verify a bundle directory and pack it into one tar")
    pack.add_argument("bundle_dir", type=Path, help="bundle directory")
    pack.add_argument("tar", type=Path, help="output .tar or .tar.gz")

    unpack = command("unpack", "safely unpack a bundle tar and check its files")
    unpack.add_argument("tar", type=Path, help="bundle .tar or .tar.gz")
    unpack.add_argument("dest", type=Path, help="directory (must not exist or be empty)")

    inspect = command("inspect", "show a bundle's manifest")
    inspect.add_argument("bundle", type=Path, help="bundle directory or .tar/.tar.gz")
    inspect.add_argument("--json", action="store_true", help="print the manifest as JSON")

    wrap = command("wrap", "wrap an existing ONNX detector as a bundle")
    wrap.add_argument("onnx", type=Path, help="ONNX detector (YOLO raw or end-to-end output)")
    wrap.add_argument("out", type=Path, help="bundle directory to create")
    wrap.add_argument("--classes", type=comma_list, metavar="NAME[,NAME...]",
                      help="class names, comma-separated (default: the ONNX metadata's)")
    wrap.add_argument("--imgsz", help="H or HxW input size (default: the ONNX metadata's)")
    wrap.add_argument("--golden-from", type=Path, required=True,
                      help="folder of images for the golden set")
    wrap.add_argument("--golden-count", type=int, default=4, help="images to use")
    wrap.add_argument("--name", required=True, help="model name (letters, digits, . _ -)")
    wrap.add_argument("--version", type=int, default=1, help="model version (integer >= 1)")
    wrap.add_argument("--label", default=None, help="human label (default: v<version>)")
    wrap.add_argument("--output-format", choices=["yolo_raw", "end2end"], default="yolo_raw",
                      help="yolo_raw [B, 4+nc, N] or end2end [B, K, 6]")
    wrap.add_argument("--score-threshold", type=float, default=0.25,
                      help="minimum score of a detection (0..1)")
    wrap.add_argument("--iou-threshold", type=float, default=0.7, help="NMS IoU (0..1)")
    wrap.add_argument("--dataset-fingerprint", default=None,
                      help="lineage: the training data's fingerprint (default: unknown)")
    wrap.add_argument("--code-revision", default=None,
                      help="lineage: the training code's revision (default: unknown)")
    wrap.add_argument("--providers", type=comma_list, default=None, metavar="NAME[,NAME...]",
                      help="ONNX Runtime providers for the golden set, comma-separated "
                      "(default: best available)")
    for cmd in sub.choices.values():  # a failure stays one `error:` line on stderr
        add_logging_arguments(cmd, default_level="warning")
    return parser


@contextmanager
def _opened(path: Path) -> Iterator[Bundle]:
    """A bundle from a directory or (unpacked into a temp dir) a tar."""
    if path.is_dir():
        yield load_bundle(path)
        return
    with tempfile.TemporaryDirectory(prefix="lineguard-bundle-") as work:
        yield open_bundle(path, Path(work) / "bundle")


def _verify(args: argparse.Namespace) -> int:
    with _opened(args.bundle) as bundle:
        m = bundle.manifest
        print(f"files: {len(m.files)} listed, sha256 ok")
        detector = OnnxDetector(bundle.model_path, args.providers)
        check_model_io(detector, m)
        print(
            f"model: input {detector.input_name} {detector.input_shape}, output "
            f"{m.output.name} ({m.output.format}, {len(m.classes)} classes) match the manifest; "
            f"running on {detector.providers[0]}"
        )
        report = verify_golden(bundle, detector)
        print(
            f"golden: {report.images} images, {report.detections} detections reproduced "
            f"(max score diff {report.max_score_diff:.4f}, min IoU {report.min_iou:.3f})"
        )
        print(f"ok: {m.name} v{m.version} ({m.label})")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    with _opened(args.bundle) as bundle:
        m = bundle.manifest
        if args.json:
            print(m.to_json(), end="")
            return 0
        pre, post = m.preprocess, m.postprocess
        lines = [
            f"bundle:      {m.name} v{m.version} ({m.label})"
            + (f", variant {m.variant}" if m.variant else ""),
            f"classes:     {len(m.classes)}: {', '.join(m.classes)}",
            f"input:       {m.input.name} {m.input.height}x{m.input.width} {m.input.dtype}, "
            f"batch {m.input.batch}",
            f"output:      {m.output.name} {m.output.format}",
            f"preprocess:  {pre.resize} {pre.interpolation} {pre.color_order} {pre.layout} "
            f"{pre.dtype} roi={pre.roi_xywh} (hash {pre.version_hash()})",
            f"postprocess: score>{post.score_threshold} {post.class_score_thresholds or ''} "
            f"iou {post.iou_threshold} max_det {post.max_detections} "
            f"{'agnostic' if post.agnostic else 'class-aware'}",
            f"lineage:     created {m.lineage.created_at.isoformat()}, dataset "
            f"{m.lineage.dataset_fingerprint}, code {m.lineage.code_revision}, parent "
            f"{m.lineage.parent_version}",
        ]
        if m.metrics is not None:
            lines.append(
                f"metrics:     {m.metrics.dataset}: P {m.metrics.precision:.3f} R "
                f"{m.metrics.recall:.3f} mAP50 {m.metrics.map50:.3f} mAP50-95 "
                f"{m.metrics.map50_95:.3f}"
            )
        lines.append("files:")
        lines += [f"  {sha[:16]}  {name}" for name, sha in sorted(m.files.items())]
        print("\n".join(lines))
    return 0


def _read_images(folder: Path, count: int) -> list[npt.NDArray[np.uint8]]:
    if not folder.is_dir():
        raise ModelError(f"--golden-from: {folder} is not a directory")
    if count < 1:
        raise ModelError("--golden-count must be >= 1")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)[:count]
    if not paths:
        kinds = ", ".join(sorted(_IMAGE_SUFFIXES))
        raise ModelError(f"--golden-from: no images ({kinds}) in {folder}")
    images: list[npt.NDArray[np.uint8]] = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ModelError(f"--golden-from: cannot read image {path}")
        images.append(np.asarray(image, dtype=np.uint8))
    return images


def _wrap_defaults(args: argparse.Namespace) -> tuple[list[str], tuple[int, int]]:
    """Classes and input size from the flags, else from Ultralytics' ONNX metadata."""
    metadata: dict[str, str] = {}
    if args.classes is None or args.imgsz is None:
        metadata = OnnxDetector(args.onnx, ["cpu"]).metadata
    if args.classes is not None:
        classes = list(args.classes)
    else:
        try:
            names = ast.literal_eval(metadata["names"])
            classes = [str(names[i]) for i in sorted(names)]
        except (KeyError, ValueError, SyntaxError, TypeError) as exc:
            raise ModelError("--classes not given and the ONNX has no usable 'names'") from exc
    text = args.imgsz if args.imgsz is not None else metadata.get("imgsz", "")
    try:
        sizes = [int(v) for v in text.strip("[]()").replace("x", ",").split(",") if v.strip()]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise ModelError(f"--imgsz must be H or HxW, got {text!r}")
    return classes, (sizes[0], sizes[-1])


def _wrap(args: argparse.Namespace) -> int:
    classes, input_hw = _wrap_defaults(args)
    bundle = build_bundle(
        args.out,
        args.onnx,
        name=args.name,
        version=args.version,
        label=args.label or f"v{args.version}",
        classes=classes,
        input_hw=input_hw,
        postprocess=PostprocessSpec(
            score_threshold=args.score_threshold, iou_threshold=args.iou_threshold
        ),
        output_format=args.output_format,
        lineage=Lineage(
            dataset_fingerprint=args.dataset_fingerprint,
            code_revision=args.code_revision,
            training_config={"wrapped_from": args.onnx.name},
            created_at=datetime.now(UTC),
        ),
        golden_images=_read_images(args.golden_from, args.golden_count),
        providers=args.providers,
    )
    m = bundle.manifest
    print(f"ok: wrote {m.name} v{m.version} to {bundle.root} ({len(m.files)} files, verified)")
    return 0


def main(argv: Sequence[str]) -> int:
    """Entry point of ``lineguard bundle``; returns the exit status (0 ok, 2 error)."""
    try:
        args = build_parser().parse_args(list(argv))
        configure_logging_from(args)
        if args.command == "verify":
            return _verify(args)
        if args.command == "pack":
            bundle = load_bundle(args.bundle_dir)
            pack_bundle(args.bundle_dir, args.tar)
            print(f"ok: packed {bundle.manifest.name} v{bundle.manifest.version} into {args.tar}")
            return 0
        if args.command == "unpack":
            unpack_bundle(args.tar, args.dest)
            m = load_bundle(args.dest).manifest
            print(f"ok: unpacked {m.name} v{m.version} into {args.dest} (files verified)")
            return 0
        if args.command == "inspect":
            return _inspect(args)
        return _wrap(args)
    except (ModelError, _UsageError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
