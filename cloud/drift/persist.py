"""JSON forms of a detector's baseline and state, as the drift tables store them."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from cloud.drift.detector import Baseline, DetectorState


def _arr(value: Any) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.asarray(value, np.float64)


def baseline_to_json(b: Baseline) -> str:
    return json.dumps({
        "names": list(b.names), "mean": b.mean.tolist(), "std": b.std.tolist(),
        "whitener": b.whitener.tolist(), "threshold": b.threshold,
        "window_frames": b.window_frames, "reference": b.reference.tolist(),
    })


def baseline_from_json(text: str) -> Baseline:
    d = json.loads(text)
    return Baseline(tuple(d["names"]), _arr(d["mean"]), _arr(d["std"]), _arr(d["whitener"]),
                    float(d["threshold"]), int(d["window_frames"]), _arr(d["reference"]))


def state_to_json(s: DetectorState, extra: dict[str, Any] | None = None) -> str:
    return json.dumps({
        "accumulator": s.accumulator.tolist(), "frames_seen": s.frames_seen,
        "onset_frame": s.onset_frame, "since_onset_frames": s.since_onset_frames,
        "since_onset_sums": None if s.since_onset_sums is None else s.since_onset_sums.tolist(),
        "since_onset_samples": [x.tolist() for x in s.since_onset_samples[-16:]],
        "pending_windows": s.pending_windows, "latched": s.latched,
        "last_statistic": s.last_statistic, **(extra or {}),
    })


def state_from_json(text: str) -> DetectorState:
    d = json.loads(text)
    sums = d["since_onset_sums"]
    return DetectorState(
        accumulator=_arr(d["accumulator"]), frames_seen=int(d["frames_seen"]),
        onset_frame=int(d["onset_frame"]), since_onset_frames=int(d["since_onset_frames"]),
        since_onset_sums=None if sums is None else _arr(sums),
        since_onset_samples=[_arr(x) for x in d["since_onset_samples"]],
        pending_windows=int(d["pending_windows"]), latched=bool(d["latched"]),
        last_statistic=float(d["last_statistic"]),
    )
