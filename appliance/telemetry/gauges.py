"""Reading the appliance's gauges for telemetry: the adapter between the pipeline's and
the store's statistics and `Gauges` (what `metrics` and `status` report besides counts).

Alarms derived here (the active set, re-read every time): `camera_lost` (a source is
lost), `no_model` (nothing can judge parts), `engine_cpu_fallback` (the engine fell back
from GPU to CPU since start), `disk_low` (free disk under the image keeper's floor),
`falling_behind` (the line produces more than the machine judges: appliance/pipeline/
behind.py), `store_unwritable` (verdicts cannot be committed), `store_reserve_used`
(the database's disk reserve is released or could not be allocated).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from appliance.errors import ApplianceError
from appliance.telemetry.metrics import Gauges, GaugeSource
from protocol import DiskUsage, ModelRef

if TYPE_CHECKING:  # the adapter only reads attributes; no import cost at runtime
    from appliance.pipeline.engine import ModelInfo
    from appliance.pipeline.stats import PipelineStats
    from appliance.store import Store

logger = logging.getLogger(__name__)


def model_ref(info: ModelInfo | None) -> ModelRef | None:
    """The wire's reference to a running model (None if it has none or does not fit)."""
    if info is None:
        return None
    try:
        return ModelRef(name=info.name, version=int(info.version), label=info.label or None)
    except ValidationError:
        try:  # a label the wire cannot carry should not hide the model
            return ModelRef(name=info.name, version=int(info.version))
        except ValidationError:
            logger.warning("model %s does not fit the wire's model reference", info.version_id)
            return None


def _file_bytes(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.stat(f"{path}{suffix}").st_size
        except OSError:
            continue
    return total


def store_disk_usage(store: Store) -> DiskUsage | None:
    """Bytes used by the database and kept images, the image quota, and free disk."""
    cfg = store.config
    try:
        free = shutil.disk_usage(cfg.path.parent).free
    except OSError as e:
        logger.warning("cannot read free disk space of %s: %s", cfg.path.parent, e)
        return None
    used = _file_bytes(cfg.path) + store.stats().images_bytes
    return DiskUsage(used_bytes=used, quota_bytes=cfg.images.quota_bytes, free_bytes=free)


def gauges_from_stats(
    stats: PipelineStats, *, store_queue: int | None = None, disk: DiskUsage | None = None,
    min_free_disk_bytes: int | None = None, store_unwritable: bool = False,
    reserve_released: bool = False,
) -> Gauges:
    """`Gauges` from one pipeline snapshot (pure)."""
    sources = {name: str(s.state) for name, s in stats.stations.items()}
    alarms: list[str] = []
    if any(state == "lost" for state in sources.values()):
        alarms.append("camera_lost")
    if stats.model is None:
        alarms.append("no_model")
    if stats.engine_fallbacks:
        alarms.append("engine_cpu_fallback")
    if stats.behind is not None and stats.behind.active:
        alarms.append("falling_behind")
    if disk is not None and min_free_disk_bytes is not None and \
            disk.free_bytes < min_free_disk_bytes:
        alarms.append("disk_low")
    if store_unwritable:
        alarms.append("store_unwritable")
    if reserve_released:
        alarms.append("store_reserve_used")
    depths = dict(stats.queue_depths)
    if store_queue is not None:
        depths["store"] = store_queue
    return Gauges(
        model=model_ref(stats.model),
        engine_provider=stats.providers[0] if stats.providers else None,
        queue_depths=depths,
        frames_captured=stats.frames,
        sources=sources,
        disk=disk,
        alarms=tuple(alarms),
    )


def pipeline_gauges(
    stats: Callable[[], PipelineStats], store: Store | None = None
) -> GaugeSource:
    """A `GaugeSource` reading `stats()` (e.g. `Pipeline.stats` or `App.stats`) and the
    store's queue, disk use and free-disk floor."""

    def read() -> Gauges | None:
        try:
            snapshot = stats()
        except ApplianceError:  # not running (yet): nothing to report
            return None
        if store is None:
            return gauges_from_stats(snapshot)
        store_stats = store.stats()
        return gauges_from_stats(
            snapshot,
            store_queue=store_stats.queued,
            store_unwritable=store_stats.unwritable,
            reserve_released=store.config.reserve_bytes > 0 and not store_stats.reserve_held,
            disk=store_disk_usage(store),
            min_free_disk_bytes=store.config.images.min_free_disk_bytes,
        )

    return read
