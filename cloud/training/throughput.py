"""Bare ONNX Runtime throughput of several models, measured side by side.

Only the session's `run` is timed (no preprocessing, decode or NMS). The models are
measured in one process, interleaved round by round (model A batch 1, model B batch 1,
A batch 8, B batch 8, then the next round), each with the same thread count, so a
machine shared with other work slows all of them alike and their *ratio* holds even
when the absolute images/s do not. Each figure is the median over rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.preprocess import Tensor
from models.runtime import OnnxDetector

__all__ = ["ThroughputRow", "measure_throughput"]


@dataclass(frozen=True)
class ThroughputRow:
    """One model at one batch size: images per second (median over rounds) and the
    ratio to the first model measured at the same batch size."""

    model: str
    batch_size: int
    images_per_s: float
    ratio: float


def measure_throughput(
    models: Mapping[str, Path],
    sample: Tensor,
    *,
    batch_sizes: Sequence[int] = (1, 8),
    threads: int = 2,
    rounds: int = 5,
    images_per_round: int = 16,
    clock: Callable[[], float] = time.perf_counter,
) -> list[ThroughputRow]:
    """Images/s of each model (name -> ONNX path, first one is the reference) at each
    batch size, on the CPU provider with `threads` intra-op threads.

    `sample`: model-input tensors [N, ...] (real preprocessed frames); batches are
    taken from it cyclically. Each round runs about `images_per_round` images per
    model and batch size. Raises the `ModelError`s of loading or running a model.
    """
    if not models or rounds < 1 or images_per_round < 1 or len(sample) == 0:
        raise ValueError("need at least one model, one round, one image and one sample")
    detectors = {name: OnnxDetector(path, ["cpu"], intra_op_threads=threads)
                 for name, path in models.items()}
    inputs = {bs: np.ascontiguousarray(np.resize(sample, (bs, *sample.shape[1:])))
              for bs in batch_sizes}
    for detector in detectors.values():  # warm up every shape once
        for batch in inputs.values():
            detector.run(batch)
    seconds: dict[tuple[str, int], list[float]] = {
        (name, bs): [] for name in detectors for bs in batch_sizes}
    for _ in range(rounds):
        for bs, batch in inputs.items():
            repeats = max(1, images_per_round // bs)
            for name, detector in detectors.items():
                start = clock()
                for _ in range(repeats):
                    detector.run(batch)
                seconds[(name, bs)].append((clock() - start) / (repeats * bs))
    rows: list[ThroughputRow] = []
    reference = next(iter(detectors))
    for bs in batch_sizes:
        base = 1.0 / statistics.median(seconds[(reference, bs)])
        for name in detectors:
            rate = 1.0 / statistics.median(seconds[(name, bs)])
            rows.append(ThroughputRow(name, bs, rate, rate / base))
    return rows
