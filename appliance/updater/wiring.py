"""How the App gets its updates and its first model (so appliance/app.py stays the
composition root): the update agent's side of the process, when configured, and the
model the line starts with."""

from __future__ import annotations

import logging
from pathlib import Path

from appliance.alarms import AlarmBook
from appliance.errors import EngineError, NoModelError, UpdateRejected
from appliance.pipeline.engine import Engine, LoadedModel
from appliance.pipeline.events import Events
from appliance.pipeline.wiring import open_model_bundle
from appliance.updater.config import UpdatesConfig
from appliance.updater.service import Updates
from models.errors import ModelError

logger = logging.getLogger(__name__)


def open_updates(cfg: UpdatesConfig | None, cache_dir: Path, *, site: str, line: str,
                 max_unpacked_bytes: int) -> Updates | None:
    """The updates, their agent lock taken, when configured and enabled; else None.
    Raises UpdateStateError if another process holds the lock."""
    if cfg is None or not cfg.enabled:
        return None
    updates = Updates(cfg, cache_dir, site=site, line=line,
                      max_unpacked_bytes=max_unpacked_bytes)
    updates.open()
    return updates


def load_start_model(engine: Engine, path: Path, *, bundles_dir: Path,
                     max_unpacked_bytes: int, verify: bool, updates: Updates | None,
                     events: Events, alarms: AlarmBook, require: bool) -> LoadedModel | None:
    """The model the line starts with: through the update agent's crash-safe choice
    when `updates` is given, else the bundle at `path` (a directory or a tar unpacked
    under `bundles_dir`). A model that cannot load raises NoModelError when `require`;
    otherwise it is logged, the `no_model` alarm is raised in `alarms` (with the bundle
    and why) and None returned (every part is then `uninspected: no_model`)."""
    try:
        if updates is not None:
            return updates.load_model(
                engine, lambda: open_model_bundle(path, bundles_dir, max_unpacked_bytes),
                events=events, verify=verify)
        bundle = open_model_bundle(path, bundles_dir, max_unpacked_bytes)
        return engine.load(bundle, verify=verify)
    except (ModelError, EngineError, UpdateRejected) as e:
        if require:
            raise NoModelError(
                f"cannot load model bundle {path}: {e}. A line without a model cannot "
                "judge parts: fix model.bundle, or set model.allow_start_without_model: "
                "true to start and wait for the first update") from e
        logger.error("starting without a model (model.allow_start_without_model): "
                     "cannot load %s: %s; every part is uninspected: no_model", path, e)
        alarms.raise_alarm("no_model", f"cannot load model bundle {path}: {e}; started "
                           "without a model (model.allow_start_without_model), parts are "
                           "recorded as uninspected: no_model", severity="critical",
                           data={"bundle": str(path)})
        return None
