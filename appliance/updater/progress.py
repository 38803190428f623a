"""How an update attempt is told: each step an `update_step` event in the store and an
`UpdateProgress` on the retained `model` topic (with the active and previous bundles)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from appliance.pipeline.events import Events
from appliance.records import Severity
from appliance.updater.errors import UpdateStateError
from appliance.updater.state import StateFile
from protocol.fields import ModelRef, new_msg_id
from protocol.model_report import StepState, UpdateProgress, UpdateStep, UpdateTrigger

Report = Callable[[str | None, str | None, UpdateProgress | None], None]
"""`report(current version id, previous version id, progress)`: the `model` topic."""


@dataclass
class Attempt:
    """One update attempt: what started it and which bundle it installs."""

    trigger: UpdateTrigger
    cmd_msg_id: str | None = None
    update_id: str = field(default_factory=new_msg_id)
    target: ModelRef | None = None

    @property
    def target_id(self) -> str | None:
        return f"{self.target.name}:{self.target.version}" if self.target else None


def model_ref(version_id: str | None) -> ModelRef | None:
    """`"name:version"` as a ModelRef (None for anything else)."""
    if not version_id or ":" not in version_id:
        return None
    name, version = version_id.rsplit(":", 1)
    return ModelRef(name=name, version=int(version)) if version.isdigit() else None


class StepReporter:
    """Records and publishes steps; `report` None: events only (no telemetry)."""

    def __init__(self, events: Events, state_file: StateFile, report: Report | None) -> None:
        self._events = events
        self._state = state_file
        self._report = report

    def step(self, attempt: Attempt, step: UpdateStep, state: StepState,
             detail: str | None = None) -> None:
        severity: Severity = "warning" if state == "failed" else "info"
        self._events.record("update_step", severity, "updater",
                            f"update {step} {state}" + (f": {detail}" if detail else ""),
                            update_id=attempt.update_id, trigger=attempt.trigger, step=step,
                            state=state, target=attempt.target_id, detail=detail)
        self.publish(UpdateProgress(update_id=attempt.update_id, trigger=attempt.trigger,
                                    cmd_msg_id=attempt.cmd_msg_id, target=attempt.target,
                                    step=step, state=state,
                                    detail=detail[:1000] if detail else None))

    def publish(self, progress: UpdateProgress | None) -> None:
        """A `model` report with the state's active and previous bundles."""
        if self._report is None:
            return
        try:
            state = self._state.load()
        except UpdateStateError:
            return
        self._report(state.active.version_id if state.active else None,
                     state.previous.version_id if state.previous else None, progress)
