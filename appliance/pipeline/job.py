"""What travels between the stages: a `Job` (one frame on its way), a `Batch` (frames
run through the model together) and the `BatchInfo` batch listeners get.

Times named `*_t` are `time.perf_counter()` seconds; `*_ms` are milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from appliance.capture import Frame
from appliance.pipeline.engine import LoadedModel
from appliance.records import UninspectedReason
from models.preprocess import FrameTransform, Tensor

ImageBGR = npt.NDArray[np.uint8]


@dataclass(slots=True)
class Job:
    """A frame on its way through the pipeline.

    `image` is the station's ROI view of the frame (no copy) and `offset_xy` its origin
    in the frame, so boxes can be shifted back to full-frame pixels; `intake_t` is when
    the pipeline got it. In worker mode `tensor` / `transform` hold its preprocessed
    input and `pre_key` says for which preprocessing (`LoadedModel.preprocess_key`) it
    was made, so a model swap in between is noticed and the frame preprocessed again.
    """

    frame: Frame
    image: ImageBGR
    offset_xy: tuple[int, int]
    intake_t: float
    tensor: Tensor | None = None
    transform: FrameTransform | None = None
    pre_key: str | None = None
    pre_ms: float = 0.0


@dataclass(slots=True)
class Batch:
    """A batch between the engine stage and the postprocess stage.

    `model` is the one model the whole batch is judged by (None: no model); `failure`
    set means every frame of it is closed as uninspected for that reason.
    """

    jobs: list[Job]
    arrivals: list[float]
    model: LoadedModel | None
    output: Tensor | None
    transforms: list[FrameTransform]
    ready_t: float
    dispatch_t: float
    infer_done_t: float
    pre_ms: float
    infer_ms: float
    failure: UninspectedReason | None


@dataclass(frozen=True)
class BatchInfo:
    """One engine batch, for batch listeners (debugging, telemetry)."""

    model_version: str | None
    frame_ids: tuple[str, ...]
    stations: tuple[str, ...]
    infer_ms: float
    failure: str | None
