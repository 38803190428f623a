"""Where the monitor finds a model's bundle reference: `<bundles_dir>/<name>/<version>/`
(an unpacked bundle, whose manifest lists `drift_reference.json` with its sha256)."""

from __future__ import annotations

import logging
from pathlib import Path

from models.bundle import load_bundle
from models.drift.reference import REFERENCE_FILE, DriftReference, read_reference
from models.errors import ModelError
from protocol.fields import ModelRef

logger = logging.getLogger(__name__)


class BundleReferences:
    """A `ReferenceSource` over a folder of unpacked bundles (verified on first read)."""

    def __init__(self, bundles_dir: Path | None) -> None:
        self._dir = bundles_dir
        self._cache: dict[tuple[str, int], DriftReference | None] = {}

    def __call__(self, model: ModelRef) -> DriftReference | None:
        key = (model.name, model.version)
        if key not in self._cache:
            self._cache[key] = self._load(model)
        return self._cache[key]

    def _load(self, model: ModelRef) -> DriftReference | None:
        if self._dir is None:
            return None
        root = self._dir / model.name / str(model.version)
        if not (root / REFERENCE_FILE).is_file():
            return None
        try:
            bundle = load_bundle(root)  # checks every file against the manifest's sha256
            if REFERENCE_FILE not in bundle.manifest.files:
                logger.warning("drift: %s is not listed in %s's manifest", REFERENCE_FILE, root)
                return None
            return read_reference(root / REFERENCE_FILE)
        except ModelError as e:
            logger.warning("drift: no reference for %s v%d: %s", model.name, model.version, e)
            return None
