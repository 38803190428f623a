"""Capture: frame sources behind one `FrameSource` protocol, and `ResilientSource`, which
reconnects them with backoff, reports their state and numbers their frames.

Sources: the simulated line (default), in-memory replay (benchmarks), a video file, an
image folder, a V4L2 camera index, an RTSP/HTTP stream. Build them from a `SourceConfig`
with `make_source` / `make_resilient_source`.
"""

from appliance.capture.config import (
    CameraSourceConfig,
    FolderSourceConfig,
    SimSourceConfig,
    SourceConfig,
    StreamSourceConfig,
    VideoSourceConfig,
    make_resilient_source,
    make_source,
    parse_source_config,
)
from appliance.capture.devices import CameraSource, StreamSource
from appliance.capture.files import ImageFolderSource, VideoFileSource
from appliance.capture.resilient import ResilientSource, StateCallback
from appliance.capture.sim import ReplaySource, SimulatedLineSource
from appliance.capture.source import Frame, FramePacer, FrameSource, ImageBGR, SourceState
from appliance.errors import CaptureError, SourceEnded, SourceLost

__all__ = [
    "CameraSource",
    "CameraSourceConfig",
    "CaptureError",
    "FolderSourceConfig",
    "Frame",
    "FramePacer",
    "FrameSource",
    "ImageBGR",
    "ImageFolderSource",
    "ReplaySource",
    "ResilientSource",
    "SimSourceConfig",
    "SimulatedLineSource",
    "SourceConfig",
    "SourceEnded",
    "SourceLost",
    "SourceState",
    "StateCallback",
    "StreamSource",
    "StreamSourceConfig",
    "VideoFileSource",
    "VideoSourceConfig",
    "make_resilient_source",
    "make_source",
    "parse_source_config",
]
