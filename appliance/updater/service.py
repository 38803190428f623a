"""`Updates`: the update agent's part of the appliance process, as `App` wires it.

    updates = Updates(cfg.updates, cache_dir, site=..., line=..., max_unpacked_bytes=...)
    updates.open()                          # the agent lock (one owner of the state)
    model = updates.load_model(engine, open_configured, events=..., verify=...)
    ... build and start the pipeline with `model` ...
    updates.start_agent(pipeline, engine, events, roi_of=..., report=...)
    updates.on_command(message)             # MQTT cmd/update, cmd/rollback: hints
    updates.stop()

`load_model` is where crash safety acts at start: the trial counter is counted (and
persisted) before the active bundle loads; a bundle that ran out of starts is abandoned
and the previous one loads; a bundle whose directory no longer matches what was verified
is refused, and so is one that cannot load, each with the previous one loading instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from appliance.errors import EngineError
from appliance.pipeline.engine import Engine, LoadedModel
from appliance.pipeline.events import Events
from appliance.updater.agent import LineControl, UpdateAgent
from appliance.updater.config import UpdatesConfig
from appliance.updater.control import AgentLock
from appliance.updater.errors import UpdateRejected, UpdateStateError
from appliance.updater.progress import Report
from appliance.updater.repository import Repository
from appliance.updater.state import BundleRef, StateFile, boot_choice, roll_back
from appliance.updater.taps import Roi
from appliance.updater.verified import BundleCache
from models.bundle import Bundle
from protocol.commands import RollbackCommand, UpdateCommand

logger = logging.getLogger(__name__)


class Updates:
    """See the module docstring."""

    def __init__(self, cfg: UpdatesConfig, cache_dir: Path, *, site: str, line: str,
                 max_unpacked_bytes: int) -> None:
        self.cfg = cfg
        self.cache_dir = Path(cache_dir)
        self.site, self.line = site, line
        self.state_file = StateFile(self.cache_dir)
        self.bundles = BundleCache(self.cache_dir, max_unpacked_bytes=max_unpacked_bytes)
        self.lock = AgentLock(self.cache_dir)
        self.agent: UpdateAgent | None = None

    def open(self) -> None:
        """Take the agent lock. Raises UpdateStateError if another process holds it."""
        if not self.lock.acquire():
            raise UpdateStateError(f"{self.lock.path} is held by another process: one "
                                   "appliance per updates.cache_dir")

    def load_model(self, engine: Engine, open_configured: Callable[[], Bundle], *,
                   events: Events, verify: bool) -> LoadedModel:
        """Count the trial, then load the active bundle (see the module docstring);
        without one, the configured bundle (`open_configured()`), which becomes the
        first `active`. Raises EngineError / ModelError when nothing can load."""
        state = self.state_file.load()
        for note in state.notes:
            events.record("model_rollback", "warning", "updater", note.message,
                          who=note.who, via="cli_offline", at=note.at.isoformat())
        state = state.model_copy(update={"notes": ()})
        before = state.trial
        state, outcome = boot_choice(state, self.cfg.max_failed_starts)
        self.state_file.save(state)
        if outcome in ("abandoned", "abandoned_staging") and before is not None:
            events.record("update_abandoned", "alarm", "updater",
                          f"bundle {before.bundle.version_id} abandoned after "
                          f"{before.failed_starts} failed starts", alarm="update_abandoned",
                          bundle=before.bundle.version_id, failed_starts=before.failed_starts)
        elif outcome == "trial" and state.trial is not None and state.trial.activated:
            logger.warning("bundle %s on trial: start %d of %d", state.active.version_id
                           if state.active else None, state.trial.failed_starts,
                           self.cfg.max_failed_starts)
        tried: set[str] = set()
        while state.active is not None and state.active.version_id not in tried:
            ref = state.active
            tried.add(ref.version_id)
            try:
                return engine.load(self.bundles.open(ref), verify=verify)
            except (UpdateRejected, EngineError) as e:
                events.record("update_refused", "alarm", "updater",
                              f"active bundle {ref.version_id} refused at start: {e}",
                              alarm="update_refused", step="start", target=ref.version_id,
                              reason=str(e))
                if state.previous is None or state.previous == ref:
                    state = state.model_copy(update={"active": None, "trial": None})
                else:
                    state = roll_back(state)
                self.state_file.save(state)
        if state.active is not None:  # every known bundle was refused
            state = state.model_copy(update={"active": None, "trial": None})
        bundle = open_configured()
        model = engine.load(bundle, verify=verify)
        adopted: BundleRef = self.bundles.adopt(bundle.root)
        self.state_file.save(state.model_copy(update={"active": adopted}))
        return model

    def start_agent(self, pipeline: LineControl, engine: Engine, events: Events, *,
                    roi_of: Mapping[str, Roi], report: Report | None) -> UpdateAgent:
        repository = Repository(self.cfg.repository_url, self.cfg.trusted_root, self.cache_dir,
                                max_bundle_bytes=self.cfg.max_bundle_bytes)
        self.agent = UpdateAgent(self.cfg, site=self.site, line=self.line,
                                 cache_dir=self.cache_dir, pipeline=pipeline, engine=engine,
                                 events=events, repository=repository, bundles=self.bundles,
                                 state_file=self.state_file, roi_of=roi_of, report=report)
        self.agent.start()
        return self.agent

    def on_command(self, message: object) -> None:
        """An MQTT command for this line: a hint to check the signed assignment now."""
        if self.agent is None:
            return
        if isinstance(message, UpdateCommand):
            self.agent.hint("hint", message.msg_id)
        elif isinstance(message, RollbackCommand):
            self.agent.hint("rollback", message.msg_id)

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.stop()
            self.agent = None
        self.lock.release()
