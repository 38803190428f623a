"""The appliance's one configuration file (YAML), validated by pydantic.

Every section forbids unknown keys and carries units in its names. With no file at all
the defaults run one simulated station with the shipped demo bundle, writing under
`./lineguard-data`. Errors are `ConfigError`s that name the key path and why, e.g.
``lineguard.yaml: pipeline.max_wait_ms: Input should be less than or equal to 1000``.

Example::

    data_dir: /var/lib/lineguard
    stations:
      - name: top
        roi_xywh: [0, 40, 640, 400]
        source: {kind: camera, index: 0}
    model: {bundle: /var/lib/lineguard/bundles/current}
    engine: {providers: [cuda, cpu]}
    pipeline: {max_batch: 8, max_wait_ms: 2, verdict_deadline_ms: 250}
    store: {batch_max_rows: 500}          # path and images.dir default under data_dir

Relative paths are relative to the working directory of the process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from appliance.alarm_rules import AlarmRulesConfig
from appliance.capture.config import STATION_PATTERN, SimSourceConfig, SourceConfig
from appliance.drift.config import DriftConfig
from appliance.errors import ConfigError
from appliance.panel.config import PanelConfig
from appliance.store.config import StoreConfig
from appliance.telemetry.config import TelemetryConfig
from appliance.updater.config import UpdatesConfig
from appliance.uploads.config import UploadsConfig
from calibration.station import StationCalibrationConfig
from models.bundle import DEFAULT_MAX_UNPACKED_BYTES
from models.demo import demo_bundle_dir
from protocol.backoff import BackoffConfig
from protocol.configfile import ConfigFileError, load_config_file, validate_mapping
from protocol.fields import ID_PATTERN

DEMO_BUNDLE = demo_bundle_dir()
"""The demo bundle shipped as package data (models/demo/bundle), the default model."""

DB_NAME = "lineguard.db"
IMAGES_DIR = "images"
BUNDLES_DIR = "bundles"
THRESHOLDS_FILE = "thresholds.json"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StationConfig(_Section):
    """One camera of the line: its source and the region of the frame to inspect.

    `roi_xywh` (x, y, width, height in frame pixels) is the station's crop, applied
    before the bundle's own preprocessing (which may crop again, inside it); boxes are
    mapped back to full-frame pixels. The source's `station` defaults to `name`.
    """

    name: str = Field("station-1", pattern=STATION_PATTERN)
    roi_xywh: tuple[int, int, int, int] | None = None
    source: SourceConfig = Field(default_factory=SimSourceConfig)
    min_frame_px: int = Field(32, ge=1, le=16384)
    """Frames narrower or lower than this (pixels) are not judged: `uninspected:
    wrong_size` (a 1x1 image is no picture of a part)."""
    frame_wh: tuple[Annotated[int, Field(ge=1, le=65_535)],
                    Annotated[int, Field(ge=1, le=65_535)]] | None = None
    """The frame size (width, height in pixels) this station's camera delivers; a frame
    of any other size is `uninspected: wrong_size`. None: any size of at least
    `min_frame_px`."""
    calibration: StationCalibrationConfig | None = None
    """Camera calibration, mm per pixel, ROI in mm and minimum defect sizes (see
    docs/calibration.md). None: an uncalibrated station (sizes in pixels only)."""

    @model_validator(mode="before")
    @classmethod
    def _source_station(cls, data: Any) -> Any:
        if isinstance(data, dict):
            source = data.get("source", {"kind": "sim"})
            if isinstance(source, dict):
                source = {"station": data.get("name", "station-1"), **source}
                data = {**data, "source": source}
        return data

    @model_validator(mode="after")
    def _check(self) -> StationConfig:
        if self.source.station != self.name:
            raise ValueError(
                f"source.station {self.source.station!r} differs from the station name "
                f"{self.name!r}; leave it out"
            )
        if self.roi_xywh is not None:
            x, y, w, h = self.roi_xywh
            if x < 0 or y < 0 or w <= 0 or h <= 0:
                raise ValueError("roi_xywh needs x, y >= 0 and width, height > 0")
            if self.calibration is not None and self.calibration.roi_mm_xywh is not None:
                raise ValueError("give the ROI once: roi_xywh (pixels) or "
                                 "calibration.roi_mm_xywh (mm), not both")
        return self

    @property
    def roi_px(self) -> tuple[int, int, int, int] | None:
        """The station's crop in pixels: `roi_xywh`, or `calibration.roi_mm_xywh`
        through the station's scale."""
        if self.roi_xywh is not None or self.calibration is None:
            return self.roi_xywh
        return self.calibration.roi_px()


class ModelConfig(_Section):
    """Which bundle to run at start (a directory or a .tar/.tar.gz)."""

    bundle: Path = DEMO_BUNDLE
    max_unpacked_bytes: int = Field(DEFAULT_MAX_UNPACKED_BYTES, ge=1024 * 1024,
                                    le=64 * 1024**3)
    """The most a .tar bundle may unpack to (bytes, all files together); a larger one is
    refused before anything is written to the data disk."""
    verify_golden: bool = True
    """Refuse a bundle whose golden set does not reproduce on this machine."""
    allow_start_without_model: bool = False
    """Start even if `bundle` cannot load (a line waiting for its first update): every
    part is then `uninspected: no_model`, the `no_model` alarm is raised and the status
    topic reports no model. False: a bundle that cannot load stops the start (exit 2)."""


class EngineConfig(_Section):
    """ONNX Runtime settings."""

    providers: list[str] | None = None
    """Execution providers in preference order (`tensorrt`, `cuda`, `cpu` or ORT names);
    None picks from what is present in the order TensorRT, CUDA, CPU."""
    intra_op_threads: int = Field(0, ge=0, le=256)
    """ORT intra-op threads; 0 means one per CPU core available to the process."""
    inter_op_threads: int = Field(1, ge=1, le=64)
    io_binding: Literal["auto", "on", "off"] = "auto"
    """I/O binding (preallocated input buffers per batch size); auto = on GPU only."""
    cpu_fallback: bool = True
    """If a GPU provider fails at run time, reload the model on CPU (and raise an alarm)."""
    warmup_runs: int = Field(1, ge=0, le=100)
    """Warm-up runs of every batch size the engine will see, before a model goes live."""

    def threads(self) -> int:
        """Intra-op threads to ask ORT for (resolves 0 to the cores available)."""
        if self.intra_op_threads:
            return self.intra_op_threads
        return max(1, len(os.sched_getaffinity(0)))


class BehindConfig(_Section):
    """The `falling_behind` alarm: the line produces more than the machine can judge
    (see appliance/pipeline/behind.py)."""

    enabled: bool = True
    after_s: float = Field(10.0, gt=0.0, le=3600.0)
    """Raise the alarm once the line has been behind this long."""
    clear_after_s: float = Field(5.0, gt=0.0, le=3600.0)
    """Clear it once the line has kept up this long."""
    window_s: float = Field(5.0, gt=0.0, le=600.0)
    """Rates and latency growth are measured over this window."""
    rate_margin: float = Field(0.05, ge=0.0, le=10.0)
    """Behind when frames are captured faster than parts are judged by more than this
    fraction (0.05: 5 %)."""
    latency_growth_ms_per_s: float = Field(100.0, gt=0.0, le=1_000_000.0)
    """...or when the capture-to-verdict latency grows faster than this (ms per s)."""


class PipelineConfig(_Section):
    """Batching, queues, overflow, deadlines and stage supervision."""

    max_batch: int = Field(8, ge=1, le=256)
    max_wait_ms: float = Field(2.0, ge=0.0, le=1000.0)
    """Longest a frame waits for others to fill its batch (from its arrival)."""
    batch_policy: Literal["adaptive", "fixed"] = "adaptive"
    """`fixed`: a batch closes at max_batch frames or max_wait_ms, whichever first.
    `adaptive`: also closes at once when the next frame is not expected within the
    wait (sparse frames are not held back for a batch that will not fill)."""
    queue_frames: int = Field(32, ge=1, le=100_000)
    """Frames waiting for the engine, all stations together."""
    overflow: Literal["drop", "block"] = "drop"
    """When the queue is full: `drop` records the new frame as uninspected (dropped) -
    right for live cameras, whose frames cannot wait; `block` holds the source until
    there is room - for files, replays and the simulated line."""
    preprocess: Literal["auto", "engine", "worker"] = "auto"
    """Where frames are preprocessed: in the engine thread right before inference
    (`engine`, best when inference runs on the same CPU cores) or in one worker thread
    per station (`worker`, overlaps with GPU inference); `auto` picks by provider."""
    post_queue_batches: int = Field(4, ge=1, le=1000)
    verdict_deadline_ms: float | None = Field(None, gt=0.0, le=3_600_000.0)
    """A verdict not ready this long after the frame's capture time becomes
    `uninspected: deadline`; a late result never replaces it. None: no deadline."""
    keep_images: bool = True
    """Offer frames to the store's image keeper (it keeps fails and a sample)."""
    drain_timeout_s: float = Field(10.0, ge=0.0, le=600.0)
    """On stop, how long queued frames may take to be judged before the rest are
    recorded as `uninspected: shutdown`."""
    restart_backoff: BackoffConfig = Field(default_factory=BackoffConfig)
    """Backoff before a stage that died is restarted."""
    behind: BehindConfig = Field(default_factory=BehindConfig)
    """When falling behind becomes an alarm."""


class ApplianceConfig(_Section):
    """The whole file. `store.path` and `store.images.dir` default under `data_dir`."""

    site: str = Field("site-1", pattern=ID_PATTERN)
    """Site id: lower case, digits, `-` and `_` (it is an MQTT topic level)."""
    line: str = Field("line-1", pattern=ID_PATTERN)
    """Line id, same rules as `site`."""
    data_dir: Path = Path("lineguard-data")
    stations: list[StationConfig] = Field(default_factory=lambda: [StationConfig()],
                                          min_length=1, max_length=64)
    model: ModelConfig = Field(default_factory=ModelConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    store: StoreConfig
    telemetry: TelemetryConfig | None = None
    """MQTT telemetry to the cloud; absent means the appliance runs without it."""
    panel: PanelConfig | None = None
    """The operator web panel; absent means no panel is served."""
    alarms: AlarmRulesConfig = Field(default_factory=AlarmRulesConfig)
    """When the operator panel's alarms are raised (appliance/alarm_rules.py)."""
    updates: UpdatesConfig | None = None
    """Verified model updates from the cloud's TUF repository; absent: none."""
    drift: DriftConfig = Field(default_factory=DriftConfig)
    """Drift signals per inspected frame, sent per window on `drift` (with telemetry)."""
    uploads: UploadsConfig | None = None
    """Frames sampled for labelling and uploaded to the cloud (appliance/uploads/); absent
    means no uploads."""

    @model_validator(mode="before")
    @classmethod
    def _store_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data_dir = Path(data.get("data_dir") or "lineguard-data")
        store = data.get("store")
        if store is None:
            store = {}
        if isinstance(store, dict):
            store = dict(store)
            store.setdefault("path", data_dir / DB_NAME)
            images = store.get("images")
            if images is None:
                images = {}
            if isinstance(images, dict):
                images = {"dir": data_dir / IMAGES_DIR, **images}
            store["images"] = images
        return {**data, "store": store}

    @model_validator(mode="after")
    def _identity_with_telemetry(self) -> ApplianceConfig:
        # The defaults name the offline demo; two lines left at them collide in the fleet.
        if self.telemetry is not None and self.telemetry.enabled:
            missing = [k for k in ("site", "line") if k not in self.model_fields_set]
            if missing:
                raise ValueError(
                    f"{' and '.join(missing)} must be set when telemetry is on: site and "
                    "line name this line in the fleet (its MQTT topics); the defaults "
                    "site-1/line-1 are only for running offline")
        return self

    @field_validator("stations")
    @classmethod
    def _unique_stations(cls, value: list[StationConfig]) -> list[StationConfig]:
        names = [s.name for s in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"station names must be unique; repeated: {duplicates}")
        return value

    @property
    def bundles_dir(self) -> Path:
        """Where .tar bundles are unpacked."""
        return self.data_dir / BUNDLES_DIR

    @property
    def thresholds_file(self) -> Path:
        """Where the engineer's per-class threshold overrides persist."""
        if self.panel is not None and self.panel.thresholds_file is not None:
            return self.panel.thresholds_file
        return self.data_dir / THRESHOLDS_FILE

    @property
    def updates_dir(self) -> Path:
        """The update agent's cache (`updates.cache_dir`, default `<data_dir>/updates`)."""
        cache = self.updates.cache_dir if self.updates is not None else None
        return cache or self.data_dir / "updates"


def config_from_dict(data: Mapping[str, Any], source: str = "config") -> ApplianceConfig:
    """Validate a mapping. Raises ConfigError naming each bad key path and why."""
    try:
        return validate_mapping(ApplianceConfig, data, source)
    except ConfigFileError as e:
        raise ConfigError(str(e)) from None


def default_config(**overrides: Any) -> ApplianceConfig:
    """The no-file configuration (simulated line, demo bundle), with top-level keys
    replaced by `overrides` (mappings, validated like the file)."""
    return config_from_dict(dict(overrides), "defaults")


def load_config(
    path: Path | None, overrides: Mapping[str, Any] | None = None
) -> ApplianceConfig:
    """Read and validate the YAML file at `path` with `overrides` (command-line
    options, same shape as the file) merged in; None or an empty file gives the
    defaults. Raises ConfigError (unreadable file, YAML syntax with line and column,
    not a mapping, invalid keys)."""
    if path is None:
        return config_from_dict(dict(overrides or {}), "defaults")
    try:
        return load_config_file(ApplianceConfig, path, overrides)
    except ConfigFileError as e:
        raise ConfigError(str(e)) from None
