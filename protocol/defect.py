"""`events/defect`: one message per part judged `fail`, with its detections (no image)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints, model_validator

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


class DefectEvent(Envelope):
    """A failed part: which part, when, by which model, and what was found."""

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
