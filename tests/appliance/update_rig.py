"""Shared parts of the update tests: bundles (good, blind, slow, crashing), a TUF
repository served on 127.0.0.1, appliance configs with an `updates:` section, an
engine factory that makes a bundle slow or kill the process by its label, waits."""

from __future__ import annotations

import io
import os
import sqlite3
import tarfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from appliance.config import ApplianceConfig, load_config
from appliance.updater.state import StateFile, UpdateState
from models.bundle import Bundle, pack_bundle
from models.golden import build_bundle
from models.manifest import parse_manifest
from models.preprocess import Tensor
from models.runtime import OnnxDetector
from tests.models.onnx_builders import (
    build_tiny_bundle,
    build_yolo_raw_model,
    simple_raw_detections,
    tiny_lineage,
)

SLOW_LABEL = "slow-3x"
CRASH_LABEL = "crash-on-load"
CRASH_EXIT = 17
HANG_LABEL = "hang-on-load"
HANG_RELEASE = threading.Event()
"""Set to let a bundle labelled `HANG_LABEL` finish loading (tests set it when done)."""


def make_bundle(root: Path, version: int, *, kind: str = "good") -> Bundle:
    """A tiny bundle `tiny:<version>`: "good" (same detections as version 1), "blind"
    (finds nothing), "slow" (labelled so `label_factory` makes it 3x+ slower), "crash"
    (labelled so `label_factory` kills the process when it loads)."""
    out, work = root / f"bundle-{kind}-v{version}", root / f"work-{kind}-v{version}"
    if kind == "blind":
        boxes, scores = simple_raw_detections(3)
        onnx_path = build_yolo_raw_model(work / "blind.onnx", boxes, np.zeros_like(scores))
        white = np.full((64, 64, 3), 255, np.uint8)
        return build_bundle(out, onnx_path, name="tiny", version=version, label="blind",
                            classes=["dent", "scratch", "stain"], input_hw=(64, 64),
                            lineage=tiny_lineage(), golden_images=[white], providers=["cpu"])
    bundle = build_tiny_bundle(out, work, version=version)
    if kind in ("slow", "crash", "hang"):
        label = {"slow": SLOW_LABEL, "crash": CRASH_LABEL, "hang": HANG_LABEL}[kind]
        path = out / "manifest.json"
        path.write_text(path.read_text().replace(f'"tiny-v{version}"', f'"{label}"'))
    return bundle


def label_factory(slow_s: float = 0.004) -> Callable[..., OnnxDetector]:
    """A detector factory: a bundle labelled `SLOW_LABEL` sleeps `slow_s` more per run
    (3x+ the tiny model's time), one labelled `CRASH_LABEL` kills the process (as a
    model that crashes ONNX Runtime would)."""
    def factory(path: Path, providers: Sequence[str] | None, intra: int,
                inter: int) -> OnnxDetector:
        label = parse_manifest(Path(path).parent / "manifest.json").label
        if label == CRASH_LABEL:
            os._exit(CRASH_EXIT)
        if label == HANG_LABEL:
            HANG_RELEASE.wait(60)
        detector = OnnxDetector(path, providers, intra_op_threads=intra,
                                inter_op_threads=inter)
        if label == SLOW_LABEL:
            inner = detector.run

            def slow_run(batch: Tensor) -> Tensor:
                started = time.perf_counter()
                out = inner(batch)
                time.sleep(max(slow_s, 3 * (time.perf_counter() - started)))
                return out
            detector.run = slow_run  # type: ignore[method-assign]
        return detector
    return factory


def escape_tar(bundle_dir: Path, out: Path) -> Path:
    """A bundle tar with an extra member `../escape.txt` (a path escape)."""
    pack_bundle(bundle_dir, out)
    with tarfile.open(out, "a") as tar:
        info = tarfile.TarInfo("../escape.txt")
        data = b"owned"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out


def updates_config(tmp: Path, name: str, bundle: Path, url: str, root_file: Path, *,
                   line: str = "line-1", **updates: Any) -> ApplianceConfig:
    base_updates = {"repository_url": url, "trusted_root": str(root_file),
                    "poll_interval_s": 3600, "shadow_frames": 10, "shadow_timeout_s": 20,
                    "health_frames": 20, "health_timeout_s": 20,
                    "check_backoff": {"initial_s": 0.05, "max_s": 0.2}}
    return load_config(None, {
        "site": "site-1", "line": line,
        "data_dir": str(tmp / name),
        "stations": [{"name": "cam", "source": {"kind": "sim", "width_px": 64,
                                                "height_px": 64, "realtime": False}}],
        "model": {"bundle": str(bundle)},
        "engine": {"intra_op_threads": 1},
        "pipeline": {"overflow": "block", "max_batch": 4},
        # No images are written (a disk floor no disk meets): these tests judge every
        # frame a fail, and encoding each would only load the machine.
        "store": {"flush_interval_ms": 10, "images": {"min_free_disk_bytes": 2**60}},
        "updates": {**base_updates, **updates},
    })


def state_of(cfg: ApplianceConfig) -> UpdateState:
    return StateFile(cfg.updates_dir).load()


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def inspections(cfg: ApplianceConfig) -> list[tuple[str, str, str | None]]:
    """(frame_id, verdict, model_version) of every stored part, in frame order."""
    conn = sqlite3.connect(cfg.store.path)
    try:
        rows = conn.execute(
            "SELECT frame_id, verdict, model_version FROM inspections").fetchall()
    finally:
        conn.close()
    return sorted(rows, key=lambda r: int(r[0].rsplit(":", 1)[1]))


def event_kinds(cfg: ApplianceConfig) -> list[tuple[str, str]]:
    conn = sqlite3.connect(cfg.store.path)
    try:
        return conn.execute("SELECT kind, data FROM events ORDER BY id").fetchall()
    finally:
        conn.close()
