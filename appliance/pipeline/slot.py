"""The slot holding the model the next batch is judged by (hot swap replaces it)."""

from __future__ import annotations

import threading

from appliance.pipeline.engine import LoadedModel


class ModelSlot:
    """The model the next batch is judged by. Replacing it is atomic; the engine stage
    reads it once per batch, so a swap takes effect between two batches."""

    def __init__(self, model: LoadedModel | None) -> None:
        self._model = model
        self._lock = threading.Lock()

    @property
    def current(self) -> LoadedModel | None:
        return self._model

    def replace(self, model: LoadedModel) -> LoadedModel | None:
        """Install `model`; returns the one it replaced."""
        with self._lock:
            old, self._model = self._model, model
            return old

    def replace_if(self, expected: LoadedModel, model: LoadedModel) -> bool:
        """Install `model` only if `expected` is still current (a swap in between wins)."""
        with self._lock:
            if self._model is not expected:
                return False
            self._model = model
            return True
