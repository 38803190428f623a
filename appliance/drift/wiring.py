"""Builds the drift recorder from the appliance config (called by `App.start`)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from appliance.drift.config import DriftConfig
from appliance.drift.recorder import DriftRecorder, ModelFacts
from appliance.drift.state import WindowStateStore
from appliance.errors import StoreError
from appliance.pipeline.engine import LoadedModel
from appliance.records import InspectionRecord
from appliance.store import Store
from models.bundle import file_sha256
from models.drift.reference import REFERENCE_FILE, read_reference
from models.errors import ModelError
from protocol.drift import DriftSketchV2, ReferenceInfo
from protocol.fields import ModelRef

logger = logging.getLogger(__name__)


def model_facts(model: LoadedModel) -> ModelFacts:
    """What the recorder needs of a loaded model (its reference, if its bundle has one)."""
    m = model.manifest
    reference = None
    if REFERENCE_FILE in m.files:
        path = model.bundle.path_of(REFERENCE_FILE)
        try:
            frames = len(read_reference(path).frames)
            reference = ReferenceInfo(source="bundle", frames=frames, sha256=file_sha256(path))
        except ModelError as e:
            logger.warning("model %s: drift reference unusable: %s", model.version_id, e)
    return ModelFacts(ModelRef(name=m.name, version=m.version, label=m.label[:128]),
                      tuple(m.classes), reference)


def start_drift(cfg: DriftConfig, *, site: str, line: str, store: Store,
                publish: Callable[[str, Callable[[], DriftSketchV2]], bool],
                current_model: Callable[[], LoadedModel | None],
                add_listener: Callable[[Callable[[InspectionRecord], None]], None],
                clock: Callable[[], float]) -> DriftRecorder | None:
    """A started recorder listening to the pipeline, or None when drift is off. The
    open windows of the last run are resumed from the store."""
    if not cfg.enabled:
        return None
    known: dict[str, ModelFacts] = {}

    def lookup(version_id: str) -> ModelFacts | None:
        if version_id not in known:
            model = current_model()
            if model is None or model.version_id != version_id:
                return None
            known[version_id] = model_facts(model)
        return known[version_id]

    states = WindowStateStore(store, clock)
    try:
        saved = states.load()
    except StoreError as e:
        logger.warning("drift windows of the last run not resumed: %s", e)
        saved = {}
    recorder = DriftRecorder(cfg, site=site, line=line,
                             publish=lambda m: publish("drift", lambda: m), models=lookup,
                             save=states.save, saved=saved, clock=clock)
    add_listener(recorder.on_verdict)
    recorder.start()
    return recorder
