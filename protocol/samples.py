"""Samples a line uploads for labelling: the body of `POST /lines/{site}/{line}/samples`
(cloud fleet API) and its answer. The appliance's uploader and the cloud's endpoint
both use these models; docs/datasets.md is the client contract.

The request is `multipart/form-data` with two parts: `meta`, this module's
`SampleMeta` as JSON, and `image`, the frame as JPEG or PNG (`image/jpeg`,
`image/png`). Boxes are `(x1, y1, x2, y2)` in pixels of that image. `sample_id` is the
idempotency key: the same id sent again (after a timeout, a restart, an outage) is
answered 200 `duplicate` and stores nothing new; a new one is answered 201 `stored`.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import BaseModel, Field, StringConstraints, model_validator

from protocol.defect import Coordinate
from protocol.fields import (
    NAME_PATTERN,
    PRINTABLE_PATTERN,
    WIRE_CONFIG,
    ClassName,
    Fraction,
    ModelRef,
    UtcTimestamp,
)

SAMPLE_SCHEMA: Final = "lineguard.sample/1"
SAMPLES_PATH: Final = "/lines/{site}/{line}/samples"
"""The upload endpoint, relative to the cloud API's base URL."""
META_PART: Final = "meta"
IMAGE_PART: Final = "image"
IMAGE_TYPES: Final = ("image/jpeg", "image/png")
MAX_BOXES: Final = 1000

SampleReason = Literal["random", "near_threshold", "rare_class", "operator"]
"""Why the line sampled the frame: at random, a score close to a class threshold, a
rare class, or an operator labelled it on the panel."""
LabelKind = Literal["confirm", "reject", "missed"]
"""An operator's label: a detection confirmed (with its class, possibly corrected), a
detection rejected (false positive), or a defect the model missed (box drawn)."""
SampleId = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
FrameId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=PRINTABLE_PATTERN)
]
BoxXyxy = tuple[Coordinate, Coordinate, Coordinate, Coordinate]


def _ordered(box: BoxXyxy) -> None:
    x1, y1, x2, y2 = box
    if x1 > x2 or y1 > y2:
        raise ValueError(f"box_xyxy {box} needs x1 <= x2 and y1 <= y2")


class SamplePrediction(BaseModel):
    """One detection the line's model made on the frame."""

    model_config = WIRE_CONFIG

    class_name: ClassName
    score: Fraction
    box_xyxy: BoxXyxy
    """(x1, y1, x2, y2) in pixels of the uploaded image."""

    @model_validator(mode="after")
    def _check(self) -> SamplePrediction:
        _ordered(self.box_xyxy)
        return self


class OperatorLabel(BaseModel):
    """One operator label from the panel."""

    model_config = WIRE_CONFIG

    kind: LabelKind
    class_name: ClassName
    box_xyxy: BoxXyxy
    """(x1, y1, x2, y2) in pixels of the uploaded image."""

    @model_validator(mode="after")
    def _check(self) -> OperatorLabel:
        _ordered(self.box_xyxy)
        return self


class SampleMeta(BaseModel):
    """Everything about an uploaded frame but its pixels (the `meta` part)."""

    model_config = WIRE_CONFIG

    schema_id: Literal["lineguard.sample/1"] = Field(SAMPLE_SCHEMA, alias="schema")
    sample_id: SampleId
    """Unique per line and stable across retries (the idempotency key)."""
    frame_id: FrameId
    captured_at: UtcTimestamp
    model: ModelRef
    """The model whose predictions these are."""
    reason: SampleReason
    predictions: list[SamplePrediction] = Field(default_factory=list, max_length=MAX_BOXES)
    labels: list[OperatorLabel] = Field(default_factory=list, max_length=MAX_BOXES)


class SampleReceipt(BaseModel):
    """The answer to an upload: `stored` (201) or `duplicate` (200, nothing changed)."""

    model_config = WIRE_CONFIG

    sample_id: SampleId
    status: Literal["stored", "duplicate"]
    image_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
