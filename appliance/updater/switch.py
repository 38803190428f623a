"""Which model the line runs, and what it can go back to: the update agent's swaps and
every rollback (automatic after a failed health window, asked for locally by
`lineguard appliance rollback` or the panel).

Invariants:
- one switch at a time (a lock): the state file says what runs before the pipeline runs
  it (`activated` before an update's swap, the rolled-back state before a rollback's);
- swaps go through `Pipeline.activate` (between two batches); the replaced model stays
  loaded as the standby, so going back to it takes milliseconds;
- a local rollback interrupts a staged update (`interrupted`): its shadow run or health
  window ends without touching what now runs;
- a rollback goes only to a verified bundle in the cache (never to one copied in by hand).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.errors import EngineError
from appliance.pipeline.engine import Engine, LoadedModel
from appliance.pipeline.events import Events
from appliance.updater import control
from appliance.updater.errors import UpdateRejected, UpdateStateError
from appliance.updater.progress import Attempt, StepReporter, model_ref
from appliance.updater.state import BundleRef, StateFile, activated, now_utc, roll_back
from appliance.updater.verified import BundleCache
from protocol.fields import new_msg_id
from protocol.model_report import UpdateProgress

if TYPE_CHECKING:
    from appliance.updater.agent import LineControl

logger = logging.getLogger(__name__)


class ModelSwitch:
    """See the module docstring."""

    def __init__(self, *, pipeline: LineControl, engine: Engine, events: Events,
                 bundles: BundleCache, state_file: StateFile,
                 progress: StepReporter) -> None:
        self._pipeline = pipeline
        self._engine = engine
        self._events = events
        self._bundles = bundles
        self._state = state_file
        self._progress = progress
        self._lock = threading.Lock()
        self._standby: LoadedModel | None = None
        self.interrupted = threading.Event()
        """Set by a local rollback: the update being staged stops (the agent clears it
        when a check begins)."""

    def swap_in(self, candidate: LoadedModel, active: LoadedModel | None) -> None:
        """Activate an update's `candidate` (recorded as `activated` first); `active`,
        the model it replaces, stays loaded as the standby."""
        with self._lock:
            self._state.save(activated(self._state.load()))
            self._pipeline.activate(candidate, reason="update")
            self._standby = active

    def automatic(self, attempt: Attempt, reason: str) -> None:
        """The health window failed: back to the previous bundle (an alarm event when it
        cannot load or there is none)."""
        with self._lock:
            state = roll_back(self._state.load())
            target = state.active
            try:
                model = self._model_for(target) if target else None
            except (UpdateRejected, EngineError) as e:
                model, reason = None, f"{reason}; the previous bundle cannot load: {e}"
            if model is None or target is None:
                self._progress.step(attempt, "rollback", "failed", reason)
                self._events.record("update_refused", "alarm", "updater",
                                    f"automatic rollback impossible: {reason}",
                                    alarm="update_refused", step="rollback", reason=reason)
                return
            self._state.save(state)
            self._pipeline.activate(model, reason="rollback")
        self._events.record("model_rollback", "warning", "updater",
                            f"rolled back to {model.version_id}: {reason}",
                            to=model.version_id, who="update agent", via="health",
                            reason=reason)
        self._progress.step(attempt, "rollback", "succeeded",
                            f"back to {model.version_id}: {reason}")

    def _model_for(self, ref: BundleRef) -> LoadedModel:
        standby = self._standby
        if standby is not None and standby.version_id == ref.version_id:
            return standby
        return self._engine.load(self._bundles.open(ref), verify=True)

    def request(self, to: str | None, *, who: str, source: str,
                request_id: str | None = None) -> control.RollbackResult:
        """Go back to a cached verified bundle (`to`: `"<name>:<version>"` or
        `"<version>"`; None: the previous one) now, without the network. Returns the
        outcome (also recorded as a `model_rollback` event naming `who` and `source`)."""
        rid = request_id or new_msg_id()[:16]

        def result(ok: bool, message: str, active: str | None = None) -> control.RollbackResult:
            return control.RollbackResult(request_id=rid, ok=ok, message=message,
                                          active=active, at=now_utc())

        with self._lock:
            state = self._state.load()
            ref = state.previous if to is None else self._find(to, state.previous,
                                                                state.active)
            if ref is None:
                why = ("no previous bundle" if to is None else
                       f"no verified bundle {to} on this machine (a bundle copied in by "
                       "hand is never activated)")
                self._events.record("update_refused", "warning", "updater",
                                    f"rollback refused: {why}", alarm="update_refused",
                                    step="rollback", who=who, via=source)
                return result(False, why)
            current = self._pipeline.model
            if current is not None and current.version_id == ref.version_id:
                return result(True, f"{ref.version_id} is already active", ref.version_id)
            try:
                model = self._model_for(ref)
            except (UpdateRejected, EngineError) as e:
                return result(False, f"{ref.version_id}: {e}")
            self._state.save(roll_back(state, ref, abandon=False))
            self._pipeline.activate(model, reason="rollback")
            self._standby = current
            self.interrupted.set()
        self._events.record("model_rollback", "warning", "updater",
                            f"rolled back to {model.version_id} (asked by {who} via {source})",
                            to=model.version_id, who=who, via=source, reason="manual")
        self._progress.publish(UpdateProgress(
            update_id=rid, trigger="manual", step="rollback", state="succeeded",
            target=model_ref(model.version_id), detail=f"asked by {who} via {source}"))
        return result(True, f"{model.version_id} active", model.version_id)

    def _find(self, to: str, *known: BundleRef | None) -> BundleRef | None:
        for ref in known:
            if ref is not None and to in (ref.version_id, ref.version_id.rsplit(":", 1)[1]):
                return ref
        return self._bundles.find(to)

    def serve_requests(self, cache_dir: Path, stop: threading.Event) -> None:
        """Answer the local rollback requests (request files under `cache_dir`, polled
        every 0.1 s) until `stop` is set."""
        while not stop.wait(0.1):
            request = control.take_request(cache_dir)
            if request is None:
                continue
            try:
                result = self.request(request.to, who=request.who, source=request.source,
                                      request_id=request.request_id)
            except (UpdateStateError, OSError) as e:
                result = control.RollbackResult(request_id=request.request_id, ok=False,
                                                message=str(e), at=now_utc())
            control.write_result(cache_dir, result)
