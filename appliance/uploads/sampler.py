"""Which frames are worth labelling (pure; no IO): the active-learning sampler.

Every inspected frame is a candidate for up to three reasons, tried in this order:
- `near_threshold`: a detection whose score is at most `margin` above its class's
  threshold (only detections above the threshold reach the verdict path, so "close"
  means just above it: the model's least sure defects);
- `rare_class`: a detection of a class making up less than `rare_share` of the last
  `rare_window` detections (every class counts as rare until it has been seen);
- `random`: the frame's id hashes under `random_fraction` (deterministic, so the same
  frame is a candidate on any machine).

The hourly budget is split by `shares`: reason r may take `quota(r) = floor(budget *
share_r)` frames per clock hour, paced: `t` seconds into the hour at most
`burst(r) + floor(quota(r) * t / 3600)` (burst: a tenth of the quota, at least 1), so a
busy first minute cannot use up the hour. A frame takes the first of its reasons that
still has budget, or is not sampled. Operator-labelled frames are outside the budget
(operator.py).

Invariants: per clock hour, reason r is granted at most quota(r) frames; a reason with
quota 0 is never granted; the sampler only counts (cheap: no image work here).
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from typing import Final, Literal

from appliance.uploads.config import UploadsConfig

BudgetReason = Literal["near_threshold", "rare_class", "random"]
REASON_ORDER: Final[tuple[BudgetReason, ...]] = ("near_threshold", "rare_class", "random")
HOUR_S: Final = 3600.0


def hourly_quotas(budget_per_hour: int, cfg: UploadsConfig) -> dict[BudgetReason, int]:
    """Frames each reason may take per clock hour."""
    shares = cfg.shares
    return {
        "near_threshold": math.floor(budget_per_hour * shares.near_threshold + 1e-9),
        "rare_class": math.floor(budget_per_hour * shares.rare_class + 1e-9),
        "random": math.floor(budget_per_hour * shares.random + 1e-9),
    }


def burst(quota: int) -> int:
    """Frames a reason may take at once at the start of an hour."""
    return 0 if quota <= 0 else max(1, quota // 10)


def allowed_by(quota: int, seconds_into_hour: float) -> int:
    """How many frames a reason with `quota` may have taken `seconds_into_hour` into
    the hour (pacing), never more than the quota."""
    if quota <= 0:
        return 0
    t = min(max(seconds_into_hour, 0.0), HOUR_S)
    return min(quota, burst(quota) + math.floor(quota * t / HOUR_S))


def random_pick(frame_id: str, fraction: float) -> bool:
    """Whether the frame is a random candidate: its id's hash falls under `fraction`."""
    if fraction <= 0.0:
        return False
    if fraction >= 1.0:
        return True
    digest = hashlib.blake2b(f"upload:{frame_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2.0**64


def near_threshold(detections: Sequence[tuple[str, float]],
                   thresholds: Mapping[str, float], margin: float) -> bool:
    """A detection scores within `margin` above its class's threshold (a class without a
    known threshold never counts)."""
    for name, score in detections:
        threshold = thresholds.get(name)
        if threshold is not None and score <= threshold + margin:
            return True
    return False


class RareClasses:
    """Class counts over the last `window` detections."""

    def __init__(self, window: int, rare_share: float) -> None:
        self._recent: deque[str] = deque(maxlen=window)
        self._counts: Counter[str] = Counter()
        self._share = rare_share

    def is_rare(self, name: str) -> bool:
        total = len(self._recent)
        return total == 0 or self._counts[name] < self._share * total

    def any_rare(self, names: Sequence[str]) -> bool:
        return any(self.is_rare(n) for n in names)

    def observe(self, names: Sequence[str]) -> None:
        for name in names:
            if len(self._recent) == self._recent.maxlen:
                old = self._recent[0]
                self._counts[old] -= 1
                if self._counts[old] <= 0:
                    del self._counts[old]
            self._recent.append(name)
            self._counts[name] += 1


class Sampler:
    """Decides per frame (see the module docstring). Thread-safe."""

    def __init__(self, cfg: UploadsConfig) -> None:
        self._cfg = cfg
        self._quotas = hourly_quotas(cfg.budget_per_hour, cfg)
        self._rare = RareClasses(cfg.rare_window, cfg.rare_share)
        self._hour: int | None = None
        self._taken: Counter[BudgetReason] = Counter()
        self._lock = threading.Lock()

    @property
    def quotas(self) -> dict[BudgetReason, int]:
        return dict(self._quotas)

    def candidates(self, frame_id: str, detections: Sequence[tuple[str, float]],
                   thresholds: Mapping[str, float]) -> list[BudgetReason]:
        """The frame's reasons, in order (reads the rare-class counts; no change)."""
        out: list[BudgetReason] = []
        if detections and near_threshold(detections, thresholds, self._cfg.margin):
            out.append("near_threshold")
        if detections and self._rare.any_rare([n for n, _ in detections]):
            out.append("rare_class")
        if random_pick(frame_id, self._cfg.random_fraction):
            out.append("random")
        return out

    def decide(self, frame_id: str, detections: Sequence[tuple[str, float]],
               thresholds: Mapping[str, float], now_s: float) -> BudgetReason | None:
        """The reason the frame is sampled for, or None; counts it against the budget
        and adds its detections to the class counts. `detections`: (class, score)."""
        with self._lock:
            hour = math.floor(now_s / HOUR_S)
            if hour != self._hour:
                self._hour, self._taken = hour, Counter()
            into = now_s - hour * HOUR_S
            chosen: BudgetReason | None = None
            for reason in self.candidates(frame_id, detections, thresholds):
                if self._taken[reason] < allowed_by(self._quotas[reason], into):
                    self._taken[reason] += 1
                    chosen = reason
                    break
            if detections:
                self._rare.observe([n for n, _ in detections])
            return chosen

    def taken(self) -> dict[BudgetReason, int]:
        """Frames granted per reason in the current hour."""
        with self._lock:
            return {r: self._taken[r] for r in REASON_ORDER}
