"""A model's drift reference: the drift signals of the frames it was trained and
validated on, stored in its bundle as `drift_reference.json` (listed in the manifest's
`files`, so covered by its sha256 like every bundle file).

The cloud's drift monitor builds a detector baseline from it; a line may instead (or
later) refine it from the first frames it runs the model on (`source: line`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Final, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.drift.signals import SIGNAL_NAMES, SIGNALS_VERSION, SignalSpec, frame_signals
from models.errors import ModelError
from models.yolo_dataset import YoloDataset
from protocol.atomic import atomic_write_text

REFERENCE_FILE: Final = "drift_reference.json"
MAX_REFERENCE_FRAMES: Final = 4000

Value = Annotated[float, Field(ge=-1e6, le=1e6)]


class DriftReferenceError(ModelError):
    """A drift reference that cannot be read or built (the message says which and why)."""


class DriftReference(BaseModel):
    """Signal vectors of reference frames, in the order they were taken."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    signals_version: str = Field(SIGNALS_VERSION, max_length=64)
    source: Literal["bundle", "line"]
    names: list[str] = Field(min_length=1, max_length=64)
    frames: list[list[Value]] = Field(min_length=1, max_length=MAX_REFERENCE_FRAMES)
    # Where the frames came from, for the record (e.g. "train+val of dataset 3f2a...").
    origin: str = Field("", max_length=200)
    # Defects per frame (labelled boxes): lets the cloud tell a defect-rate change from
    # image drift. None: unknown.
    detections: list[Annotated[float, Field(ge=0.0, le=1e4)]] | None = None

    @model_validator(mode="after")
    def _shape(self) -> DriftReference:
        d = len(self.names)
        if any(len(row) != d for row in self.frames):
            raise ValueError(f"every frame must have {d} values")
        if self.detections is not None and len(self.detections) != len(self.frames):
            raise ValueError("detections must give one count per frame")
        return self

    def detections_array(self) -> npt.NDArray[np.float64] | None:
        return None if self.detections is None else np.asarray(self.detections, np.float64)

    def matrix(self) -> npt.NDArray[np.float64]:
        """The frames as a [m, D] float64 array."""
        return np.asarray(self.frames, np.float64)

    def sha256(self) -> str:
        """sha256 of the canonical JSON (what a drift window names as its reference)."""
        return hashlib.sha256(self.model_dump_json().encode("utf-8")).hexdigest()


def reference_from_signals(signals: npt.NDArray[np.floating], source: Literal["bundle", "line"],
                           origin: str = "", detections: npt.ArrayLike | None = None
                           ) -> DriftReference:
    """A reference from frame signals [m, D] (at most MAX_REFERENCE_FRAMES kept, evenly
    spaced). Raises DriftReferenceError for another width or non-finite values."""
    x = np.asarray(signals, np.float64)
    if x.ndim != 2 or x.shape[1] != len(SIGNAL_NAMES) or len(x) == 0:
        raise DriftReferenceError(
            f"signals have shape {x.shape}; expected [m, {len(SIGNAL_NAMES)}]")
    if not np.isfinite(x).all():
        raise DriftReferenceError("signals hold non-finite values")
    det = None if detections is None else np.asarray(detections, np.float64).reshape(-1)
    if det is not None and det.shape != (len(x),):
        raise DriftReferenceError(f"{len(det)} detection counts for {len(x)} frames")
    if len(x) > MAX_REFERENCE_FRAMES:
        keep = np.linspace(0, len(x) - 1, MAX_REFERENCE_FRAMES).astype(int)
        x = x[keep]
        det = None if det is None else det[keep]
    rows = [[round(float(v), 5) for v in row] for row in x]
    return DriftReference(source=source, names=list(SIGNAL_NAMES), frames=rows, origin=origin,
                          detections=None if det is None else det.tolist())


def reference_from_dataset(dataset: YoloDataset, spec: SignalSpec, splits: tuple[str, ...] = (
        "train", "val"), max_frames: int = 1500) -> DriftReference:
    """A bundle reference from a YOLO dataset's training and validation images (evenly
    spaced, at most `max_frames`), each with its labelled boxes left out like the
    appliance leaves out its detections. Unreadable images are skipped; raises
    DriftReferenceError when none can be read."""
    import cv2

    paths = [p for split in splits if split in dataset.sources for p in dataset.images(split)]
    if len(paths) > max_frames:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, max_frames).astype(int)]
    rows, counts = [], []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            continue
        h, w = image.shape[:2]
        labels = dataset.labels_for(path).astype(np.float64)
        boxes = np.stack([(labels[:, 1] - labels[:, 3] / 2) * w,
                          (labels[:, 2] - labels[:, 4] / 2) * h,
                          (labels[:, 1] + labels[:, 3] / 2) * w,
                          (labels[:, 2] + labels[:, 4] / 2) * h], axis=1)
        rows.append(frame_signals(np.asarray(image, np.uint8), spec, boxes))
        counts.append(float(len(labels)))
    if not rows:
        raise DriftReferenceError(f"none of {len(paths)} reference images could be read")
    origin = f"{'+'.join(splits)}: {len(rows)} frames"
    return reference_from_signals(np.asarray(rows), "bundle", origin, counts)


def write_reference(reference: DriftReference, path: Path) -> Path:
    """Write `reference` atomically as JSON; returns `path`."""
    atomic_write_text(path, reference.model_dump_json())
    return path



def read_reference(path: Path) -> DriftReference:
    """Read a reference file. Raises DriftReferenceError (unreadable, not JSON, invalid)."""
    try:
        return DriftReference.model_validate(json.loads(path.read_text("utf-8")))
    except OSError as e:
        raise DriftReferenceError(f"cannot read {path}: {e.strerror}") from e
    except (ValueError, ValidationError) as e:
        raise DriftReferenceError(f"{path}: not a drift reference: {e}") from e
