"""The update agent: a thread in the appliance process that checks the line's signed
assignment (on a poll, on a `cmd/update` / `cmd/rollback` hint, at start), and stages a
newly assigned bundle: download and unpack (verified), golden set, shadow run, hot swap,
health window, then commit or automatic rollback. A second thread serves local rollback
requests (`lineguard appliance rollback`, the panel's control) within 0.1 s. The swaps
and rollbacks themselves are the `ModelSwitch`'s (switch.py).

Invariants:
- a hint only wakes the check: what runs is decided by the TUF-verified assignment;
- one update at a time; an assignment is acted on once (`last_sequence`), a lower
  sequence than one already handled is refused as a replay;
- the state file says what runs before the pipeline runs it (staging trial before the
  candidate's first load, `activated` before the swap, commit after the health window);
- swaps go through `Pipeline.activate` (between two batches, switch.py): no frame is lost
  or judged twice; the replaced model stays loaded as the standby for a fast rollback;
- the line never waits for the agent: the repository being down only backs the checks
  off (protocol/backoff.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from appliance.errors import EngineError
from appliance.pipeline.engine import Engine, LoadedModel, ModelInfo
from appliance.pipeline.events import Events
from appliance.records import InspectionRecord
from appliance.updater import control
from appliance.updater.compare import HealthFigures, health_failures, shadow_refusal
from appliance.updater.config import UpdatesConfig
from appliance.updater.errors import RepositoryUnavailable, UpdateRejected, UpdateStateError
from appliance.updater.progress import Attempt, Report, StepReporter, model_ref
from appliance.updater.repository import Repository
from appliance.updater.state import (
    BundleRef,
    StateFile,
    begin_staging,
    commit,
    refuse,
)
from appliance.updater.switch import ModelSwitch
from appliance.updater.taps import RecentVerdicts, Roi, ShadowTap
from appliance.updater.verified import BundleCache
from protocol.backoff import Backoff
from protocol.fields import ModelRef
from protocol.model_report import UpdateStep, UpdateTrigger

logger = logging.getLogger(__name__)


class LineControl(Protocol):
    """What the agent needs from the running frame path (`Pipeline` fits)."""

    @property
    def model(self) -> LoadedModel | None: ...

    def activate(self, model: LoadedModel, *, reason: str = "swap") -> ModelInfo | None: ...

    def add_listener(self, sink: Callable[[InspectionRecord], None]) -> None: ...


class UpdateAgent:
    """See the module docstring. `roi_of[station]` is each station's crop (shadow run)."""

    def __init__(self, cfg: UpdatesConfig, *, site: str, line: str, cache_dir: Path,
                 pipeline: LineControl, engine: Engine, events: Events,
                 repository: Repository, bundles: BundleCache, state_file: StateFile,
                 roi_of: Mapping[str, Roi], report: Report | None = None) -> None:
        self.cfg = cfg
        self.site, self.line = site, line
        self._cache_dir = cache_dir
        self._pipeline = pipeline
        self._engine = engine
        self._events = events
        self._repo = repository
        self._bundles = bundles
        self._state = state_file
        self._roi_of = dict(roi_of)
        self._progress = StepReporter(events, state_file, report)
        self._switch = ModelSwitch(pipeline=pipeline, engine=engine, events=events,
                                   bundles=bundles, state_file=state_file,
                                   progress=self._progress)
        self._interrupted = self._switch.interrupted
        self._recent = RecentVerdicts(max(cfg.health_frames, 200))
        self._taps: list[ShadowTap] = []
        self._taps_lock = threading.Lock()
        self._busy = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._hint: tuple[UpdateTrigger, str | None] = ("poll", None)
        self._threads: list[threading.Thread] = []
        self.checks = 0
        """Checks finished (whatever their outcome)."""
        pipeline.add_listener(self._on_verdict)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        for name, target in (("update-agent", self._run), ("update-control", self._control)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads = []
        self._repo.close()

    def hint(self, trigger: UpdateTrigger, cmd_msg_id: str | None = None) -> None:
        """A `cmd/update` / `cmd/rollback` message arrived: check the signed assignment
        now (the message itself decides nothing)."""
        self._hint = (trigger, cmd_msg_id)
        self._wake.set()

    def _on_verdict(self, record: InspectionRecord) -> None:
        self._recent.on_verdict(record)
        if self._taps:
            with self._taps_lock:
                taps = list(self._taps)
            for tap in taps:
                tap.on_verdict(record)

    def _run(self) -> None:
        backoff = Backoff(self.cfg.check_backoff)
        try:
            self._resume_trial()
        except Exception:  # the agent must outlive a failed resume (the state says trial)
            logger.exception("could not finish the trial of the active bundle")
        delay = 0.0
        while not self._stop.is_set():
            woke = self._wake.wait(delay)
            if self._stop.is_set():
                break
            trigger, msg_id = self._hint if woke else ("poll", None)
            self._wake.clear()
            self._hint = ("poll", None)
            try:
                self.check(trigger, msg_id)
            except RepositoryUnavailable as e:
                delay = backoff.next_delay_s()
                logger.warning("update check: %s; next try in %.1f s (the line runs on)",
                               e, delay)
                continue
            except (UpdateStateError, OSError) as e:
                logger.error("update check failed: %s", e)
            except Exception:  # the agent must outlive any one check
                logger.exception("update check failed")
            finally:
                self.checks += 1
            backoff.reset()
            delay = self.cfg.poll_interval_s

    def _control(self) -> None:
        self._switch.serve_requests(self._cache_dir, self._stop)

    def _refused(self, attempt: Attempt, step: UpdateStep, reason: str,
                 sequence: int | None = None, *, done: bool = True) -> None:
        self._progress.step(attempt, step, "failed", reason)
        target = attempt.target_id
        self._events.record("update_refused", "warning", "updater",
                            f"update refused at {step}: {reason}", alarm="update_refused",
                            update_id=attempt.update_id, step=step, target=target,
                            reason=reason)
        if done:
            self._state.save(refuse(self._state.load(), sequence))

    # ------------------------------------------------------------------ checking
    def check(self, trigger: UpdateTrigger = "poll", cmd_msg_id: str | None = None) -> None:
        """One check of the signed assignment, and the staged update it asks for.
        Raises RepositoryUnavailable (retry later)."""
        with self._busy:
            self._interrupted.clear()
            self._check(Attempt(trigger, cmd_msg_id))

    def _check(self, attempt: Attempt) -> None:
        try:
            session = self._repo.session()
            assignment = session.assignment(self.site, self.line)
        except UpdateRejected as e:
            self._refused(attempt, "refresh", str(e), done=False)
            return
        if assignment is None:
            return
        state = self._state.load()
        version_id = f"{assignment.model}:{assignment.version}"
        attempt.target = ModelRef(name=assignment.model, version=assignment.version)
        if assignment.sequence < state.last_sequence:
            self._refused(attempt, "refresh", f"assignment sequence {assignment.sequence} is "
                          f"older than {state.last_sequence}, already handled (a replay)",
                          done=False)
            return
        staging = state.trial if state.trial and not state.trial.activated else None
        if assignment.sequence == state.last_sequence and staging is None:
            return  # nothing new
        if state.active is not None and state.active.version_id == version_id:
            self._state.save(state.model_copy(update={"last_sequence": assignment.sequence}))
            return
        self._progress.step(attempt, "refresh", "succeeded",
                            f"assignment {assignment.sequence} ({assignment.stage}, by "
                            f"{assignment.issued_by}): {version_id}")
        ref = self._bundles.find(version_id)
        if ref is not None and ref.tar_sha256 == assignment.bundle_sha256:
            self._progress.step(attempt, "download", "skipped", "verified copy in the cache")
        else:
            self._progress.step(attempt, "download", "started")
            try:
                tar = session.bundle(assignment)
            except RepositoryUnavailable as e:
                self._progress.step(attempt, "download", "failed", str(e))
                raise
            except UpdateRejected as e:
                self._refused(attempt, "download", str(e), assignment.sequence)
                return
            self._progress.step(attempt, "download", "succeeded")
            try:
                ref = self._bundles.install(tar, name=assignment.model,
                                            version=assignment.version,
                                            tar_sha256=assignment.bundle_sha256,
                                            sequence=assignment.sequence)
            except UpdateRejected as e:
                self._refused(attempt, "unpack", str(e), assignment.sequence)
                return
            finally:
                tar.unlink(missing_ok=True)
            self._progress.step(attempt, "unpack", "succeeded", ref.path)
        self._stage(attempt, ref, assignment.sequence,
                    rollback_by=assignment.issued_by if assignment.stage == "rollback" else None)

    def _stage(self, attempt: Attempt, ref: BundleRef, sequence: int | None, *,
               rollback_by: str | None = None) -> None:
        """Golden, shadow, swap, health. A signed rollback assignment (`rollback_by`:
        who signed it) goes back to a bundle that ran before: no shadow run against the
        model it replaces, and a health window with absolute checks only."""
        # Persisted before the candidate's first load: a bundle that kills the process
        # while loading is counted at the next starts and abandoned.
        self._state.save(begin_staging(self._state.load(), ref, sequence))
        self._progress.step(attempt, "golden", "started")
        try:
            candidate = self._load_bounded(ref)
        except (UpdateRejected, EngineError) as e:
            self._refused(attempt, "golden", str(e), sequence)
            return
        self._progress.step(attempt, "golden", "succeeded")
        active = self._pipeline.model
        if active is not None and self.cfg.shadow_frames > 0 and rollback_by is None:
            self._progress.step(attempt, "shadow", "started")
            tap = ShadowTap(candidate, active, self.cfg.shadow_frames, self._roi_of,
                            min_iou=self.cfg.match_iou)
            with self._taps_lock:
                self._taps.append(tap)
            tap.start()
            result = tap.wait(self.cfg.shadow_timeout_s, self._stop)
            with self._taps_lock:
                self._taps.remove(tap)
            if self._stop.is_set() or self._interrupted.is_set():
                self._progress.step(attempt, "shadow", "skipped", "stopped")
                return
            detail = (f"{result.frames} frames, agreement {result.agreement:.3f}, "
                      f"{result.candidate_ms_p50:.1f} ms per frame against "
                      f"{result.active_ms_p50:.1f} ms")
            reason = shadow_refusal(result, wanted_frames=self.cfg.shadow_frames,
                                    min_agreement=self.cfg.min_agreement,
                                    max_latency_ratio=self.cfg.max_latency_ratio,
                                    latency_budget_ms=self.cfg.latency_budget_ms,
                                    latency_floor_ms=self.cfg.latency_floor_ms)
            if reason is not None:
                self._refused(attempt, "shadow", f"{reason} ({detail})", sequence)
                return
            self._progress.step(attempt, "shadow", "succeeded", detail)
        else:
            self._progress.step(attempt, "shadow", "skipped", "no active model to compare with"
                       if active is None else "a signed rollback" if rollback_by is not None
                       else "updates.shadow_frames is 0")
        if self._interrupted.is_set() or self._stop.is_set():
            self._progress.step(attempt, "swap", "skipped", "stopped or rolled back meanwhile")
            return
        baseline = self._recent.figures(active.version_id) \
            if active is not None and rollback_by is None else None
        seen_before = self._recent.count(candidate.version_id)
        self._switch.swap_in(candidate, active)
        self._progress.step(attempt, "swap", "succeeded",
                            f"{active.version_id if active else None} -> "
                            f"{candidate.version_id}")
        if rollback_by is not None:
            self._events.record("model_rollback", "warning", "updater",
                                f"rolled back to {candidate.version_id} by a signed assignment "
                                f"from {rollback_by}", to=candidate.version_id, who=rollback_by,
                                via="assignment", reason="signed rollback assignment")
        self._health(attempt, candidate.version_id, baseline, seen_before)

    def _load_bounded(self, ref: BundleRef) -> LoadedModel:
        """Load a candidate in a thread of its own, waiting at most `load_timeout_s`.
        Raises UpdateRejected (too slow, or what the load raised), EngineError."""
        box: list[LoadedModel | Exception] = []

        def load() -> None:
            try:
                box.append(self._engine.load(self._bundles.open(ref), verify=True))
            except (UpdateRejected, EngineError) as e:
                box.append(e)

        thread = threading.Thread(target=load, name="update-load", daemon=True)
        thread.start()
        thread.join(self.cfg.load_timeout_s)
        if not box:
            raise UpdateRejected(f"{ref.version_id} did not load in "
                                 f"{self.cfg.load_timeout_s:.0f} s (updates.load_timeout_s)")
        if isinstance(box[0], Exception):
            raise box[0]
        return box[0]

    def _health(self, attempt: Attempt, version_id: str, before: HealthFigures | None,
                seen_before: int) -> None:
        self._progress.step(attempt, "health", "started")
        cfg = self.cfg
        complete = self._recent.wait_for(version_id, seen_before + cfg.health_frames,
                                         cfg.health_timeout_s, self._stop)
        if self._stop.is_set() or self._interrupted.is_set():
            self._progress.step(attempt, "health", "skipped", "stopped")
            return
        after = self._recent.figures(version_id, last=max(cfg.health_frames, 1))
        if not complete:
            failures = [f"only {self._recent.count(version_id) - seen_before} of "
                        f"{cfg.health_frames} verdicts in {cfg.health_timeout_s:.0f} s"]
        elif after is None:
            failures = []
        else:
            failures = health_failures(
                before, after, max_uninspected_increase=cfg.max_uninspected_increase,
                max_p99_latency_ratio=cfg.max_p99_latency_ratio,
                max_defect_rate_shift=cfg.max_defect_rate_shift)
        if failures:
            reason = "; ".join(failures)
            self._progress.step(attempt, "health", "failed", reason)
            self._switch.automatic(attempt, reason)
            return
        self._progress.step(attempt, "health", "succeeded")
        self._state.save(commit(self._state.load()))
        self._progress.step(attempt, "commit", "succeeded")

    def _resume_trial(self) -> None:
        """A bundle swapped in before a restart is still on trial: its health window."""
        state = self._state.load()
        model = self._pipeline.model
        if state.trial is None or not state.trial.activated or model is None:
            return
        attempt = Attempt("crash_recovery", target=model_ref(model.version_id))
        with self._busy:
            self._health(attempt, model.version_id, None, self._recent.count(model.version_id))

    # ------------------------------------------------------------------ rollback
    def request_rollback(self, to: str | None, *, who: str, source: str,
                         request_id: str | None = None) -> control.RollbackResult:
        """Go back to a cached verified bundle now (see `ModelSwitch.request`)."""
        return self._switch.request(to, who=who, source=source, request_id=request_id)
