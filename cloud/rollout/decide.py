"""Rollout decisions: pure functions over telemetry snapshots (no IO, no clock).

`judge_line` says whether one line of a stage is healthy on the new model, not yet
known, or unhealthy (and why); `decide_stage` turns a stage's verdicts into wait,
promote, complete or halt; `split_waves` cuts the other lines into waves. All times are
UTC milliseconds since the epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from cloud.release.config import HealthBounds

ModelKey = tuple[str, int]


@dataclass(frozen=True)
class MetricsWindow:
    """One `metrics` message of a line: counts over `window_s` ending at `sent_at_ms`."""

    sent_at_ms: int
    window_s: float
    passed: int
    failed: int
    uninspected: int
    latency_p99_ms: float | None
    engine_running: bool
    model: ModelKey | None

    @property
    def parts(self) -> int:
        return self.passed + self.failed + self.uninspected

    @property
    def start_ms(self) -> int:
        return self.sent_at_ms - int(self.window_s * 1000)


@dataclass(frozen=True)
class UpdateStatus:
    """The latest update step a line reported on `model`."""

    target: ModelKey | None
    step: str
    state: str
    detail: str | None = None


@dataclass(frozen=True)
class LineObservation:
    """What the fleet store knows about one line of a stage."""

    running: ModelKey | None
    update: UpdateStatus | None
    # Metrics since the stage started (any model), and from before the rollout.
    windows: Sequence[MetricsWindow] = field(default_factory=tuple)
    baseline: Sequence[MetricsWindow] = field(default_factory=tuple)


Health = Literal["pending", "healthy", "unhealthy"]


@dataclass(frozen=True)
class LineVerdict:
    health: Health
    reason: str


def _rate(windows: Sequence[MetricsWindow]) -> tuple[int, float | None]:
    parts = sum(w.parts for w in windows)
    return parts, (sum(w.failed for w in windows) / parts if parts else None)


def judge_line(obs: LineObservation, target: ModelKey, stage_started_ms: int, now_ms: int,
               bounds: HealthBounds, health_window_s: int) -> LineVerdict:
    """Judge one line for a stage that assigned it `target` at `stage_started_ms`."""
    name, version = target
    up = obs.update
    if up is not None and up.target == target and (up.state == "failed" or up.step == "rollback"):
        what = "rolled back" if up.step == "rollback" else f"refused at step {up.step}"
        return LineVerdict("unhealthy", f"activation of {name}@{version} {what}"
                           + (f": {up.detail}" if up.detail else ""))
    new = [w for w in obs.windows if w.model == target and w.sent_at_ms >= stage_started_ms]
    if obs.running != target:
        if new:
            running = "nothing" if obs.running is None else f"{obs.running[0]}@{obs.running[1]}"
            return LineVerdict("unhealthy", f"ran {name}@{version}, now runs {running}")
        if now_ms - stage_started_ms >= bounds.activation_timeout_s * 1000:
            return LineVerdict("unhealthy", f"{name}@{version} not active after "
                               f"{bounds.activation_timeout_s} s")
        return LineVerdict("pending", "waiting for activation")
    if not new:
        return LineVerdict("pending", "active; waiting for metrics on the new model")
    worst_p99 = max((w.latency_p99_ms for w in new if w.latency_p99_ms is not None), default=None)
    if worst_p99 is not None and worst_p99 > bounds.max_latency_p99_ms:
        return LineVerdict("unhealthy", f"latency p99 {worst_p99:.1f} ms > "
                           f"{bounds.max_latency_p99_ms:g} ms")
    engine_errors = sum(1 for w in new if not w.engine_running)
    if engine_errors > bounds.max_engine_error_windows:
        return LineVerdict("unhealthy", f"{engine_errors} metrics window(s) without a running "
                           f"engine > {bounds.max_engine_error_windows}")
    parts, failed_rate = _rate(new)
    window_over = now_ms - min(w.start_ms for w in new) >= health_window_s * 1000
    enough = parts >= bounds.min_parts
    if enough or window_over:
        uninspected = sum(w.uninspected for w in new)
        if parts and uninspected / parts > bounds.max_uninspected_rate:
            return LineVerdict("unhealthy", f"uninspected rate {uninspected / parts:.3f} > "
                               f"{bounds.max_uninspected_rate:g} ({uninspected} of {parts})")
        base_parts, base_rate = _rate(obs.baseline)
        if (failed_rate is not None and base_rate is not None and enough
                and base_parts >= bounds.min_parts
                and abs(failed_rate - base_rate) > bounds.max_defect_rate_shift):
            return LineVerdict("unhealthy", f"defect rate {failed_rate:.3f} vs {base_rate:.3f} "
                               f"before: shift > {bounds.max_defect_rate_shift:g}")
    if not window_over:
        return LineVerdict("pending", f"in the health window ({parts} parts so far)")
    if not enough:
        return LineVerdict("unhealthy", f"only {parts} parts in the {health_window_s} s health "
                           f"window (< {bounds.min_parts})")
    return LineVerdict("healthy", f"{parts} parts over the health window within bounds")


Action = Literal["wait", "promote", "complete", "halt"]


@dataclass(frozen=True)
class StageDecision:
    action: Action
    reason: str


def decide_stage(verdicts: Mapping[str, LineVerdict], *, last_stage: bool) -> StageDecision:
    """Any unhealthy line halts; all healthy promotes (completes after the last stage)."""
    bad = {line: v.reason for line, v in sorted(verdicts.items()) if v.health == "unhealthy"}
    if bad:
        return StageDecision("halt", "; ".join(f"{line}: {why}" for line, why in bad.items()))
    if all(v.health == "healthy" for v in verdicts.values()):
        return StageDecision("complete" if last_stage else "promote",
                             f"{len(verdicts)} line(s) healthy")
    waiting = sorted(line for line, v in verdicts.items() if v.health == "pending")
    return StageDecision("wait", f"waiting for {', '.join(waiting)}")


def split_waves(lines: Sequence[str], waves: int) -> list[list[str]]:
    """`lines` (sorted) cut into at most `waves` non-empty groups of near-equal size."""
    ordered = sorted(lines)
    count = max(1, min(waves, len(ordered)))
    size, extra = divmod(len(ordered), count)
    out, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        if end > start:
            out.append(ordered[start:end])
        start = end
    return out
