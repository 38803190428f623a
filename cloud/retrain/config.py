"""`retrain:` in the cloud config: training defaults, the validation gate, and the
triggers (schedule, per-line requests from the drift detector).

Example::

    retrain:
      work_dir: /var/lib/lineguard-cloud/retrain
      gate: {map50_tolerance: 0.01, max_recall_drop: 0.05, latency_budget_ms: 40}
      lines:
        plant1/line-1: {dataset: line1-parts}     # newest version of this dataset
      schedule: {every_h: 168}                     # every line above, once a week
      min_interval_h: 24                           # per line, between two requests
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

_LINE_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}/[a-z0-9][a-z0-9_-]{0,62}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GateConfig(_Section):
    """When a candidate is refused. Compared with its parent on the dataset's held-out
    split and on the parent's holdout."""

    # Refuse when the candidate's mAP50 is below the parent's by more than this, on
    # either held-out set (absolute, 0.01 = 1 point).
    map50_tolerance: float = Field(0.01, ge=0.0, le=1.0)
    # Refuse when any class's recall falls by more than this (absolute) on either set.
    max_recall_drop: float = Field(0.05, ge=0.0, le=1.0)
    # Classes with fewer ground-truth boxes than this in a set are not held to the
    # recall rule there (their recall moves in steps too coarse to judge).
    min_instances_for_recall: int = Field(10, ge=1, le=1_000_000)
    # Refuse when the candidate does not beat its parent's mAP50 by at least this on
    # the new data's held-out split: the val images of the dataset version that none
    # of its parent versions held (e.g. the operators' labelled drift samples). A
    # retraining that did not learn what it was asked to learn is not shipped, however
    # harmless elsewhere. Not judged for a version without parent versions, or with
    # fewer than `min_new_data_images` such images.
    min_new_data_gain: float = Field(0.02, ge=0.0, le=1.0)
    min_new_data_images: int = Field(5, ge=1, le=1_000_000)
    # Refuse when the median batch-1 latency of the candidate on this machine (ONNX
    # Runtime, CPU) exceeds this.
    latency_budget_ms: float = Field(100.0, gt=0.0, le=60_000.0)
    latency_threads: int = Field(2, ge=1, le=256)
    latency_rounds: int = Field(5, ge=1, le=100)
    # A candidate that passes becomes `approved` at once; off: it stays a candidate
    # until an engineer runs `lineguard cloud models promote`.
    approve_on_pass: bool = True


class LineRetrain(_Section):
    """The data a line's model is fine-tuned on: the newest version of `dataset`."""

    dataset: str = Field(min_length=1, max_length=256)


class ScheduleConfig(_Section):
    """Retrain every configured line at a fixed period (null: no schedule)."""

    every_h: float = Field(ge=1.0, le=24 * 366)


class TrainingDefaults(_Section):
    """Ultralytics arguments of a fine-tune, unless the command line overrides them."""

    epochs: int = Field(20, ge=1, le=10_000)
    imgsz: int = Field(256, ge=32, le=4096)
    batch: int = Field(16, ge=1, le=4096)
    device: str = Field("cpu", min_length=1, max_length=64)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    optimizer: str = Field("AdamW", min_length=1, max_length=32)
    lr0: float = Field(0.0005, gt=0.0, le=1.0)
    warmup_epochs: float = Field(0.0, ge=0.0, le=100.0)
    close_mosaic: int = Field(10, ge=0, le=10_000)
    # Keep the parent's first N layers (0: fine-tune every layer); e.g. 10 freezes a
    # YOLO11 backbone: less forgetting of what the parent knew, cheaper epochs.
    freeze: int = Field(0, ge=0, le=1000)
    workers: int = Field(0, ge=0, le=64)


class RetrainConfig(_Section):
    """Retraining: where runs work, the gate, and the triggers."""

    # Ultralytics runs, logs and staging bundles (one folder per run).
    work_dir: Path = Path("retrain-runs")
    training: TrainingDefaults = Field(default_factory=TrainingDefaults)
    gate: GateConfig = Field(default_factory=GateConfig)
    # `site/line` -> the dataset its model is fine-tuned on.
    lines: dict[str, LineRetrain] = Field(default_factory=dict, max_length=10_000)
    schedule: ScheduleConfig | None = None
    # A line gets at most one retrain request per this many hours (drift, schedule).
    min_interval_h: float = Field(24.0, ge=0.0, le=24 * 366)
    # A drift request waits (queued) for the line's dataset to gain a version newer
    # than the request: retraining on the data the drifted model already learned from
    # teaches it nothing about what changed. After this many hours without new data it
    # fails, saying so. 0: drift requests run at once on the newest version.
    drift_data_wait_h: float = Field(72.0, ge=0.0, le=24 * 366)
    # The worker looks for queued requests this often.
    poll_s: float = Field(30.0, ge=0.1, le=3600.0)

    @field_validator("lines")
    @classmethod
    def _line_keys(cls, value: dict[str, LineRetrain]) -> dict[str, LineRetrain]:
        bad = [k for k in value if not _LINE_KEY.fullmatch(k)]
        if bad:
            raise ValueError(f"line keys must be site/line (lower-case ids), got {bad}")
        return value
