"""`events/defect`: one message per part judged `fail`, with its detections (no image).

Version 2 (`lineguard.events.defect/2`, what lines send) adds each detection's size on
the part plane in millimetres (`size_mm_wh`, None where the station has no scale).
Version 1 (`DefectEventV1`) stays readable for lines that still send it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from protocol.envelope import Envelope
from protocol.fields import (
    PRINTABLE_PATTERN,
    WIRE_CONFIG,
    ClassName,
    Fraction,
    Milliseconds,
    ModelRef,
    Name,
    UtcTimestamp,
)
from protocol.topics import TopicKind

# Pixel coordinates in the original (not preprocessed) image; may be sub-pixel.
Coordinate = Annotated[float, Field(ge=-1_000_000.0, le=1_000_000.0)]
PixelSize = Annotated[int, Field(ge=1, le=65_535)]
PartId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=PRINTABLE_PATTERN)]


class Detection(BaseModel):
    """One detected defect: class, confidence and box."""

    model_config = WIRE_CONFIG

    class_id: int = Field(ge=0, le=4095)
    class_name: ClassName
    score: Fraction
    # (x1, y1, x2, y2) in original image pixels, x1 <= x2 and y1 <= y2.
    box_xyxy: tuple[Coordinate, Coordinate, Coordinate, Coordinate]

    @model_validator(mode="after")
    def _box_ordered(self) -> Detection:
        x1, y1, x2, y2 = self.box_xyxy
        if x1 > x2 or y1 > y2:
            raise ValueError(f"box_xyxy {self.box_xyxy} needs x1 <= x2 and y1 <= y2")
        return self


Millimetres = Annotated[float, Field(ge=0.0, le=1_000_000.0)]


class SizedDetection(Detection):
    """One detected defect with its size on the part plane (version 2)."""

    # (width, height) of the box in mm on the part plane, from the station's calibrated
    # scale; None: the station has no scale.
    size_mm_wh: tuple[Millimetres, Millimetres] | None = None


# Version 1, kept to read lines that still send it. Its docstring and title are the
# published schema's: a published version never changes.
class DefectEventV1(Envelope):
    """A failed part: which part, when, by which model, and what was found."""

    model_config = ConfigDict(**WIRE_CONFIG, title="DefectEvent")  # v1 schema unchanged

    KIND = TopicKind.DEFECT_EVENT

    schema_id: Literal["lineguard.events.defect/1"] = Field(
        "lineguard.events.defect/1", alias="schema"
    )
    # The part id from the line (PLC / source) when there is one.
    part_id: PartId | None = None
    frame_id: PartId
    station: Name | None = None
    captured_at: UtcTimestamp
    model: ModelRef
    # (width, height) of the original image in pixels; boxes refer to it.
    image_size_wh: tuple[PixelSize, PixelSize]
    defects: list[Detection] = Field(min_length=1, max_length=1000)
    # From capture to verdict.
    latency_ms: Milliseconds | None = None


class DefectEvent(Envelope):
    """A failed part: which part, when, by which model, and what was found."""

    KIND = TopicKind.DEFECT_EVENT

    schema_id: Literal["lineguard.events.defect/2"] = Field(
        "lineguard.events.defect/2", alias="schema"
    )
    # The part id from the line (PLC / source) when there is one.
    part_id: PartId | None = None
    frame_id: PartId
    station: Name | None = None
    captured_at: UtcTimestamp
    model: ModelRef
    # (width, height) of the original image in pixels; boxes refer to it.
    image_size_wh: tuple[PixelSize, PixelSize]
    defects: list[SizedDetection] = Field(min_length=1, max_length=1000)
    # From capture to verdict.
    latency_ms: Milliseconds | None = None
