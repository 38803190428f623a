"""`drift`: a per-window sketch of image statistics, for the cloud's drift detection.

Version 1 is deliberately small: enough to compare a line's images with the reference
of the model it runs (brightness, colour, contrast, focus). Richer sketches (embeddings,
per-ROI stats) come as new schema versions. All statistics are over the frames the
appliance sampled in the window; they are absent when `frame_count` is 0.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from protocol.envelope import Envelope
from protocol.fields import WIRE_CONFIG, Count, Fraction, ModelRef, Name, UtcTimestamp
from protocol.topics import TopicKind

# Grey levels on an 8-bit scale (0-255); deeper sensors are scaled to 8 bits first.
Level8 = Annotated[float, Field(ge=0.0, le=255.0)]
NonNegative = Annotated[float, Field(ge=0.0, le=1e12)]


class ChannelStats(BaseModel):
    """Mean and standard deviation of one colour channel's pixel values, 8-bit scale."""

    model_config = WIRE_CONFIG

    channel: Literal["r", "g", "b", "gray"]
    mean_u8: Level8
    std_u8: Level8


class BrightnessHistogram(BaseModel):
    """Histogram of pixel luma over the window: equal-width bins from 0 to 256 (8-bit).

    `fractions[i]` is the share of pixels with luma in `[i * 256 / n, (i+1) * 256 / n)`
    where n is the number of bins; the fractions sum to 1.
    """

    model_config = WIRE_CONFIG

    fractions: list[Fraction] = Field(min_length=2, max_length=256)

    @model_validator(mode="after")
    def _sums_to_one(self) -> BrightnessHistogram:
        total = sum(self.fractions)
        if abs(total - 1.0) > 1e-3:
            raise ValueError(f"histogram fractions sum to {total}, not 1")
        return self


class SharpnessStats(BaseModel):
    """Distribution of per-frame sharpness (variance of the Laplacian of luma)."""

    model_config = WIRE_CONFIG

    metric: Literal["laplacian_var"] = "laplacian_var"
    mean: NonNegative
    std: NonNegative
    p05: NonNegative
    p50: NonNegative
    p95: NonNegative

    @model_validator(mode="after")
    def _ordered(self) -> SharpnessStats:
        if not self.p05 <= self.p50 <= self.p95:
            raise ValueError("sharpness percentiles must satisfy p05 <= p50 <= p95")
        return self


class DriftSketch(Envelope):
    """Image statistics of one line (or one station) over one time window."""

    KIND = TopicKind.DRIFT

    schema_id: Literal["lineguard.drift/1"] = Field("lineguard.drift/1", alias="schema")
    window_start: UtcTimestamp
    window_end: UtcTimestamp
    station: Name | None = None
    frame_count: Count
    # The model the line ran during the window: the cloud compares with its reference.
    ref_model: ModelRef | None = None
    channels: list[ChannelStats] | None = Field(default=None, min_length=1, max_length=4)
    brightness_hist: BrightnessHistogram | None = None
    sharpness: SharpnessStats | None = None

    @model_validator(mode="after")
    def _consistent(self) -> DriftSketch:
        if self.window_end < self.window_start:
            raise ValueError("window_end is before window_start")
        if self.channels is not None:
            names = [c.channel for c in self.channels]
            if len(set(names)) != len(names):
                raise ValueError(f"channels repeat: {names}")
        if self.frame_count == 0 and (
            self.channels is not None
            or self.brightness_hist is not None
            or self.sharpness is not None
        ):
            raise ValueError("a window with frame_count 0 has no statistics")
        return self
