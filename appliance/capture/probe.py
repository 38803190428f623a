"""Opening every configured source once, before a run: what `check-config` reports and
what `run` refuses to start with.

A source is one of three things at start:
- `ok`: it opened and gave a frame (its size is reported);
- `unusable`: a video file or image folder that does not exist or cannot be read. That is
  a configuration error: a file does not come back by retrying, so `run` refuses to
  start (`require_file_sources`) instead of retrying forever;
- `unreachable`: a camera or stream that is down now. That is what live sources do:
  `run` starts anyway and retries it with backoff (a `source_state` alarm event and the
  `camera_lost` alarm say so), `check-config` reports it and still passes.

Probes use a source of their own (never the one the pipeline will read), opened once
and closed, each stream with a short timeout; `probe_sources` runs them in parallel so
a line of unreachable cameras costs one timeout, not one per camera.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum

from appliance.capture.config import (
    CameraSourceConfig,
    FolderSourceConfig,
    SourceConfig,
    StreamSourceConfig,
    VideoSourceConfig,
    make_source,
)
from appliance.capture.devices import StreamSource, redact_url
from appliance.capture.source import FrameSource
from appliance.errors import CaptureError, ConfigError

FILE_KINDS = frozenset({"video", "folder"})
"""Sources that are files: one that cannot be opened at start is a config error."""


class ProbeState(StrEnum):
    """What opening a source once found (see the module docstring)."""

    OK = "ok"
    UNUSABLE = "unusable"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True, slots=True)
class SourceProbe:
    """One station's source as found at start. `target` is what it points at (path,
    URL without credentials, camera device); `detail` the frame size or the error."""

    station: str
    kind: str
    target: str
    state: ProbeState
    detail: str

    def line(self) -> str:
        """One line for people: ``cam (video /data/a.mp4): ok, 640x480 frames``."""
        where = f"{self.kind} {self.target}" if self.target else self.kind
        if self.state == ProbeState.UNREACHABLE:
            return f"{self.station} ({where}): unreachable now, run retries it: {self.detail}"
        return f"{self.station} ({where}): {self.state}, {self.detail}"


def source_target(cfg: SourceConfig) -> str:
    """What a source points at, for messages: path, redacted URL or camera device."""
    if isinstance(cfg, VideoSourceConfig | FolderSourceConfig):
        return str(cfg.path)
    if isinstance(cfg, StreamSourceConfig):
        return redact_url(cfg.url)
    if isinstance(cfg, CameraSourceConfig):
        return f"/dev/video{cfg.index}"
    return ""


def _missing_path(cfg: SourceConfig) -> str | None:
    if isinstance(cfg, VideoSourceConfig) and not cfg.path.is_file():
        return f"video file {cfg.path} does not exist" if not cfg.path.exists() \
            else f"{cfg.path} is not a file"
    if isinstance(cfg, FolderSourceConfig) and not cfg.path.is_dir():
        return f"image folder {cfg.path} does not exist" if not cfg.path.exists() \
            else f"{cfg.path} is not a folder"
    return None


def _probe_source(cfg: SourceConfig, timeout_ms: int) -> FrameSource:
    if isinstance(cfg, StreamSourceConfig):
        return StreamSource(cfg.url, open_timeout_ms=min(cfg.open_timeout_ms, timeout_ms),
                            read_timeout_ms=min(cfg.read_timeout_ms, timeout_ms))
    return make_source(cfg)


def probe_source(cfg: SourceConfig, *, timeout_ms: int = 2000) -> SourceProbe:
    """Open `cfg`'s source once (a stream with at most `timeout_ms` to connect and to
    give a frame), read one frame, close it. Never raises for a source that fails: the
    failure is the probe's state."""
    target = source_target(cfg)
    missing = _missing_path(cfg)
    if missing is not None:
        return SourceProbe(cfg.station, cfg.kind, target, ProbeState.UNUSABLE, missing)
    failed = ProbeState.UNUSABLE if cfg.kind in FILE_KINDS else ProbeState.UNREACHABLE
    source = _probe_source(cfg, timeout_ms)
    try:
        source.open()
        image_bgr, _part_id, _captured_at = source.read()
    except CaptureError as e:  # SourceLost or SourceEnded (an empty file)
        return SourceProbe(cfg.station, cfg.kind, target, failed, str(e))
    finally:
        source.close()
    height, width = image_bgr.shape[:2]
    return SourceProbe(cfg.station, cfg.kind, target, ProbeState.OK,
                       f"{width}x{height} frames")


def probe_sources(cfgs: Sequence[SourceConfig], *, timeout_ms: int = 2000) -> list[SourceProbe]:
    """`probe_source` of every config, in parallel, in the order given."""
    if not cfgs:
        return []
    with ThreadPoolExecutor(max_workers=min(len(cfgs), 16),
                            thread_name_prefix="probe") as pool:
        return list(pool.map(lambda c: probe_source(c, timeout_ms=timeout_ms), cfgs))


def config_errors(probes: Sequence[SourceProbe]) -> list[str]:
    """The probes that make a configuration unusable, as messages naming the station."""
    return [f"station {p.station}: {p.detail}" for p in probes
            if p.state == ProbeState.UNUSABLE]


def require_file_sources(cfgs: Sequence[SourceConfig]) -> None:
    """Open every video file and image folder among `cfgs` once. Raises ConfigError
    naming each station whose file or folder does not exist or cannot be read (live
    sources are not opened here: they are retried when down)."""
    errors = config_errors(probe_sources([c for c in cfgs if c.kind in FILE_KINDS]))
    if errors:
        raise ConfigError("; ".join(errors))
