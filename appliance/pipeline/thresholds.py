"""Per-class score threshold overrides set by an engineer on the panel: applied to the
running judge and persisted, so they survive a restart.

Invariants:
- overrides are by class *name* (they outlive a model swap; a class the running model
  does not have is kept, and applies again when a model with it returns);
- `set` replaces the whole mapping atomically (a reference swap, then `version` + 1):
  the postprocess stage reads it once per batch, so a batch is judged by one set;
- persistence is one JSON file written atomically (protocol/atomic.py): a crash leaves
  the old or the new overrides, never a torn file.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from appliance.errors import ConfigError
from appliance.pipeline.judge import Judge
from protocol.atomic import atomic_write_text


def check_thresholds(values: Mapping[str, float]) -> dict[str, float]:
    """Validated copy: names non-empty, thresholds finite within [0, 1]. Raises ValueError."""
    out: dict[str, float] = {}
    for name, value in values.items():
        if not isinstance(name, str) or not name or len(name) > 64:
            raise ValueError(f"class name must be 1..64 characters, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"threshold of {name!r} must be within [0, 1], got {value!r}")
        out[name] = float(value)
    return out


class ThresholdOverrides:
    """See the module docstring. `path` None: not persisted (tests, benchmarks)."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}
        self.version = 0
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
                self._values = check_thresholds(data)
            except (OSError, ValueError) as e:
                raise ConfigError(f"{path}: threshold overrides unreadable: {e}") from e

    @property
    def values(self) -> dict[str, float]:
        return dict(self._values)

    def set(self, values: Mapping[str, float]) -> dict[str, float]:
        """Replace the overrides (persisted first, then applied). Returns the previous
        ones. Raises ValueError (bad values) or OSError (cannot persist: nothing applied)."""
        checked = check_thresholds(values)
        with self._lock:
            if self._path is not None:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(self._path, json.dumps(checked, sort_keys=True, indent=1))
            previous, self._values = self._values, checked
            self.version += 1
        return previous

    def apply(self, judge: Judge) -> Judge:
        """`judge` with the overrides of its classes applied (itself when none apply)."""
        values = self._values
        if not any(c in values for c in judge.classes):
            return judge
        thresholds = np.array([values.get(c, float(t)) for c, t in
                               zip(judge.classes, judge.thresholds, strict=True)],
                              dtype=np.float32)
        return Judge(judge.classes, thresholds)
