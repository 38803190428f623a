"""Source configuration (one per station) and the factory that builds sources from it.

`SourceConfig` is a pydantic union discriminated on `kind`; every variant forbids unknown
keys and carries the station name and the reconnect backoff (`reconnect`, a
`protocol.backoff.BackoffConfig`). The ROI is not here: it
belongs to the station's preprocessing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, assert_never
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from appliance.capture.devices import CameraSource, StreamSource
from appliance.capture.files import ImageFolderSource, VideoFileSource
from appliance.capture.resilient import ResilientSource, StateCallback
from appliance.capture.sim import SimulatedLineSource
from appliance.capture.source import FrameSource
from protocol.backoff import BackoffConfig

if TYPE_CHECKING:
    from linesim import LineConfig

STATION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""Station names go into frame ids, file names and MQTT topics: keep them plain."""

STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https")


class _SourceBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    station: str = Field("station-1", pattern=STATION_PATTERN)
    reconnect: BackoffConfig = Field(default_factory=BackoffConfig)
    """Backoff between attempts to (re)open a lost source."""


class SimSourceConfig(_SourceBase):
    """The simulated line (`linesim`): the default demo camera."""

    kind: Literal["sim"] = "sim"
    seed: int = Field(0, ge=0)
    width_px: int = Field(640, ge=64, le=8192)
    height_px: int = Field(480, ge=64, le=8192)
    parts_per_minute: float = Field(600.0, gt=0.0, le=60_000.0)
    realtime: bool = True
    drift: str = ""
    """Drift knobs as `knob=value,...` (see `linesim.Drift.parse`); empty is no drift."""

    @field_validator("drift")
    @classmethod
    def _parse_drift(cls, value: str) -> str:
        import linesim  # lazy: only a sim source needs it

        try:
            linesim.Drift.parse(value)
        except linesim.ConfigError as e:
            raise ValueError(str(e)) from e
        return value

    def line_config(self) -> LineConfig:
        """The `linesim.LineConfig` this source renders."""
        import linesim

        return linesim.LineConfig(
            width_px=self.width_px,
            height_px=self.height_px,
            parts_per_minute=self.parts_per_minute,
            seed=self.seed,
            drift=linesim.Drift.parse(self.drift),
        )


class VideoSourceConfig(_SourceBase):
    """A video file decoded by OpenCV/FFmpeg."""

    kind: Literal["video"]
    path: Path
    loop: bool = False
    max_fps: float | None = Field(None, gt=0.0, le=1000.0)


class FolderSourceConfig(_SourceBase):
    """A folder of images in natural name order."""

    kind: Literal["folder"]
    path: Path
    pattern: str = Field("*.png|*.jpg", min_length=1)
    """Globs joined by `|`, matched case-insensitively on file names."""
    loop: bool = False
    max_fps: float | None = Field(None, gt=0.0, le=1000.0)
    part_id_from_name: bool = False


class CameraSourceConfig(_SourceBase):
    """A USB/V4L2 camera (`/dev/video{index}`)."""

    kind: Literal["camera"]
    index: int = Field(0, ge=0, le=255)
    width_px: int | None = Field(None, ge=16, le=16384)
    height_px: int | None = Field(None, ge=16, le=16384)
    fps: float | None = Field(None, gt=0.0, le=1000.0)


class StreamSourceConfig(_SourceBase):
    """An RTSP or HTTP(S) (MJPEG) stream."""

    kind: Literal["stream"]
    url: str
    open_timeout_ms: int = Field(5000, ge=100, le=120_000)
    """How long connecting may take before the attempt fails and is retried. Opening an
    RTSP stream takes seconds (FFmpeg reads the start of the stream to learn its
    format; 2.5 s for the test camera): keep a margin above that."""
    read_timeout_ms: int = Field(5000, ge=100, le=120_000)
    """How long a read waits for a frame before the stream counts as lost. A stalled
    RTSP (H.264) stream is declared lost after up to about 3 times this (measured with
    the bundled OpenCV/FFmpeg); an HTTP MJPEG one after this."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme.lower() not in STREAM_SCHEMES or not parts.hostname:
            raise ValueError(
                f"must be a {', '.join(STREAM_SCHEMES)} URL with a host, e.g. "
                "rtsp://10.0.0.5:554/stream1"
            )
        return value


SourceConfig = Annotated[
    SimSourceConfig
    | VideoSourceConfig
    | FolderSourceConfig
    | CameraSourceConfig
    | StreamSourceConfig,
    Field(discriminator="kind"),
]


def parse_source_config(data: object) -> SourceConfig:
    """Validate one station's source config (a mapping with `kind`).
    Raises pydantic.ValidationError naming the bad field."""
    adapter: TypeAdapter[SourceConfig] = TypeAdapter(SourceConfig)
    return adapter.validate_python(data)


def make_source(cfg: SourceConfig) -> FrameSource:
    """Build the (not yet opened) source that `cfg` describes."""
    if isinstance(cfg, SimSourceConfig):
        return SimulatedLineSource(cfg.line_config(), realtime=cfg.realtime)
    if isinstance(cfg, VideoSourceConfig):
        return VideoFileSource(cfg.path, loop=cfg.loop, max_fps=cfg.max_fps)
    if isinstance(cfg, FolderSourceConfig):
        return ImageFolderSource(
            cfg.path,
            pattern=cfg.pattern,
            loop=cfg.loop,
            max_fps=cfg.max_fps,
            part_id_from_name=cfg.part_id_from_name,
        )
    if isinstance(cfg, CameraSourceConfig):
        return CameraSource(cfg.index, width_px=cfg.width_px, height_px=cfg.height_px,
                            fps=cfg.fps)
    if isinstance(cfg, StreamSourceConfig):
        return StreamSource(cfg.url, open_timeout_ms=cfg.open_timeout_ms,
                            read_timeout_ms=cfg.read_timeout_ms)
    assert_never(cfg)


def make_resilient_source(
    cfg: SourceConfig, *, on_state: StateCallback | None = None, first_seq: int = 0
) -> ResilientSource:
    """`make_source(cfg)` wrapped in a `ResilientSource` with the config's station name
    and backoff."""
    return ResilientSource(
        cfg.station,
        make_source(cfg),
        reconnect=cfg.reconnect,
        on_state=on_state,
        first_seq=first_seq,
    )
