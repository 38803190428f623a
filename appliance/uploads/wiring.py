"""How the App builds the uploads (one function, so appliance/app.py needs two lines)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from appliance.alarms import AlarmBook
from appliance.errors import StoreError
from appliance.pipeline.engine import LoadedModel
from appliance.store import Store
from appliance.uploads.config import UploadsConfig
from appliance.uploads.service import Thresholds, Uploads

logger = logging.getLogger(__name__)

UPLOADS_DIR = "uploads"


def thresholds_of(model: Callable[[], LoadedModel | None]) -> Thresholds:
    """The active model's class thresholds, recomputed only after a model swap."""
    cache: list[tuple[LoadedModel, dict[str, float]]] = []

    def current() -> Mapping[str, float]:
        loaded = model()
        if loaded is None:
            return {}
        if not cache or cache[0][0] is not loaded:
            classes = list(loaded.manifest.classes)
            values = loaded.manifest.postprocess.threshold_for(classes)
            cache[:] = [(loaded, {c: float(v) for c, v in zip(classes, values, strict=True)})]
        return cache[0][1]

    return current


def start_uploads(cfg: UploadsConfig | None, store: Store, alarms: AlarmBook, *,
                  site: str, line: str,
                  data_dir: Path, model: Callable[[], LoadedModel | None],
                  add_listener: Callable[[Callable[..., None]], None],
                  clock: Callable[[], float] = time.time) -> Uploads | None:
    """Start the uploads when configured and enabled, and register the verdict listener.
    A spool that cannot be prepared is logged and leaves uploads off (inspection goes
    on); returns None then."""
    if cfg is None or not cfg.enabled:
        return None
    uploads = Uploads(cfg, store, site=site, line=line,
                      spool_dir=cfg.dir or data_dir / UPLOADS_DIR,
                      thresholds=thresholds_of(model), alarms=alarms,
                      clock=clock)
    try:
        uploads.start()
    except (StoreError, OSError) as e:
        logger.error("sample uploads disabled: %s", e)
        uploads.stop(1.0)
        return None
    add_listener(uploads.on_verdict)
    return uploads
