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


# --- lineguard.drift/2 -------------------------------------------------------------

MAX_SIGNALS = 64
MAX_SAMPLES = 32
# Signal values and their sums stay far from float limits; anything beyond is a bug or
# an attack, and the collector quarantines it.
SignalValue = Annotated[float, Field(ge=-1e6, le=1e6)]
SignalSum = Annotated[float, Field(ge=-1e12, le=1e12)]
SignalSumSq = Annotated[float, Field(ge=0.0, le=1e15)]
SignalName = Annotated[str, Field(min_length=1, max_length=80, pattern=r"^[^\x00-\x1f\x7f]*$")]


class SignalMoments(BaseModel):
    """Counts-free moments of a vector of per-frame signals over a window's frames:
    `sums[i]` and `sums_sq[i]` of signal `names[i]`, and up to 32 frames' full vectors
    (`samples`, drawn uniformly from the window) for the cloud's two-sample test.
    Windows and lines merge by adding sums and frame counts."""

    model_config = WIRE_CONFIG

    names: list[SignalName] = Field(min_length=1, max_length=MAX_SIGNALS)
    sums: list[SignalSum] = Field(min_length=1, max_length=MAX_SIGNALS)
    sums_sq: list[SignalSumSq] = Field(min_length=1, max_length=MAX_SIGNALS)
    samples: list[list[SignalValue]] = Field(default_factory=list, max_length=MAX_SAMPLES)

    @model_validator(mode="after")
    def _shapes(self) -> SignalMoments:
        d = len(self.names)
        if len(set(self.names)) != d:
            raise ValueError("signal names repeat")
        if len(self.sums) != d or len(self.sums_sq) != d:
            raise ValueError(f"{d} names but {len(self.sums)} sums and {len(self.sums_sq)} sums_sq")
        for row in self.samples:
            if len(row) != d:
                raise ValueError(f"a sample has {len(row)} values; expected {d}")
        return self


class ReferenceInfo(BaseModel):
    """Which reference the line's signals are meant to be compared with: the bundle's
    (from its training and validation frames; `sha256` of its reference file) or one
    refined from the first `frames` frames the line ran the model on (`line`)."""

    model_config = WIRE_CONFIG

    source: Literal["bundle", "line"]
    frames: Count
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


class DriftSketchV2(Envelope):
    """Per-frame drift signals of one line (or station) over one window of frames.

    `image` holds the image signals (statistics of the inspected and background regions,
    a small embedding; `signals_version` defines them); `output` the detector-output
    channel (detections per frame, score statistics, per-class counts), kept apart
    because a change in the defect rate is not image drift. The window covers the frame
    ids `first_frame_id..last_frame_id` of `ref_model`: the cloud de-duplicates on
    `msg_id`, and the line never sends two windows that overlap in frame ids.
    """

    KIND = TopicKind.DRIFT

    schema_id: Literal["lineguard.drift/2"] = Field("lineguard.drift/2", alias="schema")
    window_start: UtcTimestamp
    window_end: UtcTimestamp
    station: Name | None = None
    ref_model: ModelRef | None = None
    first_frame_id: Count
    last_frame_id: Count
    frame_count: Annotated[int, Field(ge=0, le=1_000_000)]
    signals_version: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9./_-]+$")]
    reference: ReferenceInfo | None = None
    image: SignalMoments | None = None
    output: SignalMoments | None = None

    @model_validator(mode="after")
    def _consistent(self) -> DriftSketchV2:
        if self.window_end < self.window_start:
            raise ValueError("window_end is before window_start")
        if self.last_frame_id < self.first_frame_id:
            raise ValueError("last_frame_id is before first_frame_id")
        if self.frame_count > self.last_frame_id - self.first_frame_id + 1:
            raise ValueError("frame_count exceeds the frame id range")
        if self.frame_count == 0 and (self.image is not None or self.output is not None):
            raise ValueError("a window with frame_count 0 has no statistics")
        n = self.frame_count
        for part in (self.image, self.output):
            if part is None:
                continue
            if len(part.samples) > n:
                raise ValueError(f"{len(part.samples)} samples from {n} frames")
            for s, sq in zip(part.sums, part.sums_sq, strict=True):
                # Cauchy-Schwarz: sum(x)^2 <= n sum(x^2) (with rounding slack).
                if s * s > n * sq * (1 + 1e-6) + 1e-6:
                    raise ValueError("sums and sums_sq are inconsistent (variance < 0)")
        return self
