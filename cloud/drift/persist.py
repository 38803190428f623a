"""JSON forms of a detector's baseline and state, as the drift tables store them."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from cloud.drift.detector import Baseline, DetectorState, WindowRecord


def _arr(value: Any) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.asarray(value, np.float64)


def baseline_to_json(b: Baseline) -> str:
    return json.dumps({
        "names": list(b.names), "mean": b.mean.tolist(), "std": b.std.tolist(),
        "whitener": b.whitener.tolist(), "threshold": b.threshold,
        "window_frames": b.window_frames, "reference": b.reference.tolist(),
        "beta": None if b.beta is None else b.beta.tolist(), "det_mean": b.det_mean,
        # JSON has no infinity: None stands for "not used".
        "channel_threshold": b.channel_threshold if math.isfinite(b.channel_threshold)
        else None,
        "allowance": b.allowance,
        "channel_allowance": None if b.channel_allowance is None
        else b.channel_allowance.tolist(),
    })


def baseline_from_json(text: str) -> Baseline:
    d = json.loads(text)
    beta = d.get("beta")
    channel_threshold = d.get("channel_threshold")
    return Baseline(tuple(d["names"]), _arr(d["mean"]), _arr(d["std"]), _arr(d["whitener"]),
                    float(d["threshold"]), int(d["window_frames"]), _arr(d["reference"]),
                    None if beta is None else _arr(beta), float(d.get("det_mean", 0.0)),
                    math.inf if channel_threshold is None else float(channel_threshold),
                    None if d.get("allowance") is None else float(d["allowance"]),
                    None if d.get("channel_allowance") is None
                    else _arr(d["channel_allowance"]))


def state_to_json(s: DetectorState, extra: dict[str, Any] | None = None) -> str:
    return json.dumps({
        "accumulator": s.accumulator.tolist(), "frames_seen": s.frames_seen,
        "history": [[w.first_frame, w.end_frame, w.frames, w.sums.tolist(), w.z.tolist(),
                     w.samples.tolist()] for w in s.history],
        "pending_windows": s.pending_windows, "latched": s.latched,
        "last_statistic": s.last_statistic,
        "channel_accumulator": None if s.channel_accumulator is None
        else s.channel_accumulator.tolist(),
        "last_channel_statistic": s.last_channel_statistic, **(extra or {}),
    })


def state_from_json(text: str) -> DetectorState:
    d = json.loads(text)
    width = len(d["accumulator"])
    history = [WindowRecord(int(a), int(b), int(n), _arr(sums), _arr(z),
                            _arr(samples).reshape(-1, width))
               for a, b, n, sums, z, samples in d["history"]]
    channels = d.get("channel_accumulator")
    return DetectorState(
        accumulator=_arr(d["accumulator"]), frames_seen=int(d["frames_seen"]),
        channel_accumulator=None if channels is None else _arr(channels).reshape(2, width),
        history=history, pending_windows=int(d["pending_windows"]),
        latched=bool(d["latched"]), last_statistic=float(d["last_statistic"]),
        last_channel_statistic=float(d.get("last_channel_statistic", 0.0)),
    )
