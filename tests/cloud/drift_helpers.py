"""Shared bits of the drift tests: synthetic signal streams and windows as messages."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from appliance.drift.window import DriftWindow
from models.drift.signals import SIGNAL_NAMES, SIGNALS_VERSION
from protocol.drift import DriftSketchV2
from protocol.fields import ModelRef

F64 = npt.NDArray[np.float64]
D = len(SIGNAL_NAMES)
MODEL = ModelRef(name="demo", version=3)
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC).timestamp()


def mixing(seed: int = 0) -> F64:
    """A fixed correlation structure for synthetic signals."""
    rng = np.random.default_rng(seed)
    return np.asarray(np.eye(D) + 0.3 * rng.standard_normal((D, D)) / np.sqrt(D), np.float64)


def frames(n: int, seed: int, shift: dict[str, float] | None = None) -> F64:
    """[n, D] synthetic frame signals (correlated noise around 0.5); `shift` adds a
    constant to the named signals (in units of their noise)."""
    rng = np.random.default_rng(seed)
    x = 0.5 + 0.05 * rng.standard_normal((n, D)) @ mixing().T
    for name, delta in (shift or {}).items():
        x[:, SIGNAL_NAMES.index(name)] += 0.05 * delta
    return np.asarray(x, np.float64)


def sketches(x: F64, *, window: int, first_seq: int = 0, site: str = "plant1",
             line: str = "line-3", station: str = "cam", model: ModelRef = MODEL,
             seed: int = 0) -> list[DriftSketchV2]:
    """The windows the appliance would send for frame signals `x` (one frame per second,
    no detections)."""
    w = DriftWindow(station, window_frames=window, window_s=1e9, sample_frames=16, seed=seed)
    out: list[DriftSketchV2] = []
    empty = np.zeros(3, np.float32)
    for i, row in enumerate(x):
        w.add(first_seq + i, T0 + first_seq + i, model, row.astype(np.float32), SIGNAL_NAMES,
              empty, ("detections", "score_mean", "score_max"))
        if w.due(T0 + first_seq + i):
            msg = w.close(site=site, line=line, sent_at=T0 + first_seq + i,
                          signals_version=SIGNALS_VERSION, reference=None)
            assert msg is not None
            out.append(msg)
    return out
