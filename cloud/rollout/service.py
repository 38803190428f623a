"""Rollouts: start, advance, halt, and an engineer's rollback; the controller loop.

Every decision is made from what the cloud database holds (the rollout row, the
assignments) and what the fleet store shows (the lines' `model` and `metrics`
telemetry), so a restarted controller carries on where the last one stopped.

Invariants:
- A stage's lines are signed before the stage is judged; `step` first makes sure every
  line of the current stage holds this rollout's assignment (signing what a crash left
  unsigned), so "promote" is only a compare-and-set of the stage index.
- A halted rollout sends every line it reached back to its assignment from before the
  rollout (a new assignment, stage `rollback`); `step` finishes that after a crash.
- Lines of a later stage never get an assignment for the version before their stage.
- MQTT hints are best effort: a lost hint delays a line until its next poll.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from cloud.errors import CloudError
from cloud.fleet.views import LineModelView, LineView, MetricsPoint
from cloud.release.config import HealthBounds
from cloud.release.errors import PublishRejected, ReleaseError
from cloud.release.publish import assign_line
from cloud.release.repository import Repository
from cloud.release.store import ReleaseStore, RolloutView, ms_to_dt
from cloud.rollout.decide import (
    LineObservation,
    LineVerdict,
    MetricsWindow,
    ModelKey,
    UpdateStatus,
    decide_stage,
    judge_line,
    split_waves,
)
from protocol.assignment import Assignment, AssignmentStage

logger = logging.getLogger(__name__)


class TelemetrySource(Protocol):
    """The fleet store's read side (cloud.fleet.FleetStore)."""

    def lines(self) -> list[LineView]: ...

    def line_model(self, site: str, line: str) -> LineModelView | None: ...

    def metrics(self, site: str, line: str, *, since: datetime | None = None,
                until: datetime | None = None, limit: int = 1000) -> list[MetricsPoint]: ...


class Hinter(Protocol):
    """Sends `cmd/update` / `cmd/rollback` hints (cloud.rollout.hints.MqttHinter)."""

    def update(self, site: str, line: str, model: str, version: int, reason: str) -> None: ...

    def rollback(self, site: str, line: str, version: int, reason: str) -> None: ...


def split_line(text: str) -> tuple[str, str]:
    """`site/line` -> (site, line). Raises PublishRejected."""
    site, sep, line = text.partition("/")
    if not sep or not site or not line or "/" in line:
        raise PublishRejected(f"{text!r} is not SITE/LINE")
    return site, line


def _window(p: MetricsPoint) -> MetricsWindow:
    model = (p.model_name, p.model_version) if p.model_name and p.model_version is not None \
        else None
    return MetricsWindow(
        sent_at_ms=int(p.sent_at.timestamp() * 1000), window_s=p.window_s, passed=p.passed,
        failed=p.failed, uninspected=p.uninspected,
        latency_p99_ms=None if p.end_to_end is None else p.end_to_end.p99_ms,
        engine_running=p.engine_provider is not None, model=model)


class RolloutService:
    """See the module docstring."""

    def __init__(self, repo: Repository, store: ReleaseStore, telemetry: TelemetrySource,
                 hinter: Hinter | None, bounds: HealthBounds, *,
                 by: str = "rollout-controller") -> None:
        self.repo = repo
        self.store = store
        self.telemetry = telemetry
        self.hinter = hinter
        self.bounds = bounds
        self.by = by

    def _now_ms(self) -> int:
        return self.store.clock_ms()

    # ---- starting

    def start(self, model: str, version: int, canaries: Sequence[str], *, by: str,
              waves: int = 1, health_window_s: int | None = None) -> RolloutView:
        """Create a rollout of the released `model@version`: stage 0 the `canaries`
        (`site/line`), then every other known line in `waves`; sign the canaries now.
        Raises PublishRejected (not released, no canary, a canary in another active
        rollout), ReleaseError."""
        if self.store.release(model, version) is None:
            raise PublishRejected(f"{model}@{version} is not released; publish it first")
        if not canaries:
            raise PublishRejected("name at least one canary line (--canary SITE/LINE)")
        canary_list = sorted({"/".join(split_line(c)) for c in canaries})
        known = {f"{v.site}/{v.line}" for v in self.telemetry.lines()}
        known |= {f"{a.site}/{a.line}" for a in self.store.current_assignments()}
        busy = {line for r in self.store.rollouts(state="active") for stage in r.stages
                for line in stage}
        clash = sorted(busy & (known | set(canary_list)))
        if clash:
            raise PublishRejected(f"line(s) {', '.join(clash)} are in an active rollout; "
                                  "halt it first")
        others = sorted(known - set(canary_list))
        stages = [canary_list, *split_waves(others, waves)] if others else [canary_list]
        previous: dict[str, tuple[str, int] | None] = {}
        for line in (x for stage in stages for x in stage):
            current = self.store.current_assignment(*split_line(line))
            previous[line] = None if current is None else (current.model, current.version)
        now = self._now_ms()
        rollout = RolloutView(
            rollout_id=f"ro-{time.strftime('%Y%m%d%H%M%S', time.gmtime(now / 1000))}-"
            f"{secrets.token_hex(3)}",
            model=model, version=version, state="active", stages=stages, stage_index=0,
            stage_started_at=ms_to_dt(now), previous=previous,
            health_window_s=health_window_s or self.bounds.health_window_s, created_by=by,
            created_at=ms_to_dt(now), updated_at=ms_to_dt(now), reason=None)
        self.store.create_rollout(rollout)
        self._ensure_assigned(rollout)
        return self._reload(rollout.rollout_id)

    def _reload(self, rollout_id: str) -> RolloutView:
        found = self.store.rollout(rollout_id)
        if found is None:
            raise ReleaseError(f"rollout {rollout_id} vanished from the database")
        return found

    # ---- advancing

    def step(self) -> list[RolloutView]:
        """Look at every active rollout once (and finish any halt a crash interrupted).
        Returns the rollouts as they are afterwards. Raises ReleaseError."""
        out = []
        for rollout in self.store.rollouts(state="active", limit=1000):
            out.append(self._advance(rollout))
        for rollout in self.store.rollouts(state="halted", limit=20):
            self._ensure_reverted(rollout)
        return out

    def _advance(self, r: RolloutView) -> RolloutView:
        self._ensure_assigned(r)
        now = self._now_ms()
        started = int(r.stage_started_at.timestamp() * 1000)
        verdicts = {line: self._judge(r, line, started, now) for line in r.stages[r.stage_index]}
        last = r.stage_index == len(r.stages) - 1
        decision = decide_stage(verdicts, last_stage=last)
        if decision.action == "wait":
            return r
        logger.info("rollout %s of %s@%d stage %d: %s (%s)", r.rollout_id, r.model, r.version,
                    r.stage_index, decision.action, decision.reason)
        if decision.action == "halt":
            self._halt(r, f"stage {r.stage_index} unhealthy: {decision.reason}", "halted")
        elif decision.action == "complete":
            self.store.move_rollout(r, state="completed", stage_index=r.stage_index,
                                    stage_started_at_ms=started, reason=None,
                                    step="completed", detail=decision.reason)
        elif self.store.move_rollout(r, state="active", stage_index=r.stage_index + 1,
                                     stage_started_at_ms=now, reason=None, step="promoted",
                                     detail=f"stage {r.stage_index} {decision.reason}; "
                                     f"stage {r.stage_index + 1}: "
                                     f"{', '.join(r.stages[r.stage_index + 1])}"):
            moved = self.store.rollout(r.rollout_id)
            if moved is not None:
                self._ensure_assigned(moved)
        return self._reload(r.rollout_id)

    def _judge(self, r: RolloutView, line: str, started_ms: int, now_ms: int) -> LineVerdict:
        site, line_id = split_line(line)
        view = self.telemetry.line_model(site, line_id)
        running: ModelKey | None = None
        update: UpdateStatus | None = None
        if view is not None:
            if view.current is not None:
                running = (view.current.name, view.current.version)
            if view.update is not None:
                target = view.update.target
                update = UpdateStatus(
                    target=None if target is None else (target.name, target.version),
                    step=view.update.step, state=view.update.state, detail=view.update.detail)
        created_ms = int(r.created_at.timestamp() * 1000)
        windows = [_window(p) for p in self.telemetry.metrics(
            site, line_id, since=ms_to_dt(started_ms), limit=10_000)]
        baseline = [_window(p) for p in self.telemetry.metrics(
            site, line_id, since=ms_to_dt(created_ms - self.bounds.baseline_window_s * 1000),
            until=ms_to_dt(created_ms), limit=10_000)]
        obs = LineObservation(running=running, update=update, windows=windows,
                              baseline=baseline)
        return judge_line(obs, (r.model, r.version), started_ms, now_ms, self.bounds,
                          r.health_window_s)

    def _ensure_assigned(self, r: RolloutView) -> None:
        stage: AssignmentStage = "canary" if r.stage_index == 0 else (
            "all" if len(r.stages) == 2 else "wave")
        for line in r.stages[r.stage_index]:
            site, line_id = split_line(line)
            current = self.store.current_assignment(site, line_id)
            if current is not None and current.rollout_id == r.rollout_id:
                continue
            assign_line(self.repo, self.store, site, line_id, r.model, r.version, stage=stage,
                        by=self.by, rollout_id=r.rollout_id,
                        reason=f"rollout {r.rollout_id} stage {r.stage_index}")
            self.store.add_step(r, "assigned", f"{r.model}@{r.version} ({stage})",
                                site=site, line=line_id)
            self._hint_update(site, line_id, r.model, r.version,
                              f"rollout {r.rollout_id} {stage}")

    # ---- halting and rolling back

    def halt(self, rollout_id: str, reason: str, *, by: str) -> RolloutView:
        """Halt an active rollout and send its lines back. Raises PublishRejected."""
        r = self.store.rollout(rollout_id)
        if r is None:
            raise PublishRejected(f"no rollout {rollout_id}")
        if r.state != "active":
            raise PublishRejected(f"rollout {rollout_id} is {r.state}, not active")
        self._halt(r, f"halted by {by}: {reason}", "halted")
        return self._reload(rollout_id)

    def _halt(self, r: RolloutView, reason: str, step: str) -> None:
        if not self.store.move_rollout(r, state="halted", stage_index=r.stage_index,
                                       stage_started_at_ms=int(
                                           r.stage_started_at.timestamp() * 1000),
                                       reason=reason, step=step, detail=reason):
            return
        logger.warning("rollout %s of %s@%d halted: %s", r.rollout_id, r.model, r.version,
                       reason)
        moved = self.store.rollout(r.rollout_id)
        if moved is not None:
            self._ensure_reverted(moved)

    def _ensure_reverted(self, r: RolloutView) -> None:
        for stage in r.stages[: r.stage_index + 1]:
            for line in stage:
                site, line_id = split_line(line)
                current = self.store.current_assignment(site, line_id)
                if current is None or current.rollout_id != r.rollout_id \
                        or current.stage == "rollback":
                    continue
                before = r.previous.get(line)
                if before is None:
                    self.store.add_step(r, "not_reverted", "no assignment from before the "
                                        "rollout to return to", site=site, line=line_id)
                    continue
                assign_line(self.repo, self.store, site, line_id, before[0], before[1],
                            stage="rollback", by=self.by, rollout_id=r.rollout_id,
                            reason=f"rollout {r.rollout_id} halted: {r.reason}")
                self.store.add_step(r, "reverted", f"back to {before[0]}@{before[1]}",
                                    site=site, line=line_id)
                self._hint_rollback(site, line_id, before[1], f"rollout {r.rollout_id} halted")

    def rollback(self, site: str, line: str, *, by: str, to_version: int | None = None,
                 reason: str | None = None) -> Assignment:
        """Sign a new assignment of `site/line` back to `to_version` of its current model
        (default: the newest earlier assignment naming another version). Raises
        PublishRejected (nothing to go back to, not released), ReleaseError."""
        history = self.store.assignments(site, line, limit=1000)
        if not history:
            raise PublishRejected(f"{site}/{line} has no assignment to roll back from")
        current = history[0]
        if to_version is None:
            earlier = next((a for a in history[1:] if a.version != current.version
                            and a.model == current.model), None)
            if earlier is None:
                raise PublishRejected(f"{site}/{line} was never assigned another version of "
                                      f"{current.model}; name one with --to")
            to_version = earlier.version
        why = reason or f"rollback from {current.model}@{current.version}"
        assignment = assign_line(self.repo, self.store, site, line, current.model, to_version,
                                 stage="rollback", by=by, reason=why)
        self.store.event("rollback", f"{site}/{line}: {current.model}@{current.version} -> "
                         f"@{to_version} by {by}", model=current.model, version=to_version,
                         site=site, line=line)
        self._hint_rollback(site, line, to_version, why)
        return assignment

    # ---- hints

    def _hint_update(self, site: str, line: str, model: str, version: int, reason: str) -> None:
        if self.hinter is not None:
            try:
                self.hinter.update(site, line, model, version, reason)
            except ReleaseError as e:
                logger.warning("no cmd/update hint to %s/%s: %s", site, line, e)

    def _hint_rollback(self, site: str, line: str, version: int, reason: str) -> None:
        if self.hinter is not None:
            try:
                self.hinter.rollback(site, line, version, reason)
            except ReleaseError as e:
                logger.warning("no cmd/rollback hint to %s/%s: %s", site, line, e)


class Stepper(Protocol):
    def step(self) -> object: ...


def run_controller(service: Stepper, stop: threading.Event, interval_s: float,
                   *, on_error: Callable[[CloudError], None] | None = None) -> None:
    """Call `service.step()` every `interval_s` until `stop` is set. A failing step is
    logged and retried at the next tick (the database or repository may come back)."""
    while not stop.is_set():
        try:
            service.step()
        except CloudError as e:  # release records, repository, fleet store: retried
            logger.error("rollout controller step failed: %s", e)
            if on_error is not None:
                on_error(e)
        stop.wait(interval_s)
