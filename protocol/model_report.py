"""`model`: which model a line runs, the one before it, and how an update is going.

Retained. The appliance publishes it at start, on every step of an update and on every
model change, so the retained copy is always the latest state. An update runs the steps
refresh, download, unpack, golden, shadow, swap, health, commit in that order; a failure
at or after swap is followed by `rollback`. Each step is reported `started` and then
`succeeded`, `failed` or `skipped` (`running` with `progress` in between when it is long).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from protocol.envelope import Envelope
from protocol.fields import WIRE_CONFIG, Fraction, ModelRef, MsgId, Name, Text
from protocol.topics import TopicKind

UpdateStep = Literal[
    "refresh", "download", "unpack", "golden", "shadow", "swap", "health", "commit", "rollback"
]
StepState = Literal["started", "running", "succeeded", "failed", "skipped"]
# hint: a cmd/update message; poll: the periodic TUF check; manual: an engineer on the
# panel; rollback: a cmd/rollback message; crash_recovery: the trial counter ran out.
UpdateTrigger = Literal["hint", "poll", "manual", "rollback", "crash_recovery"]


class UpdateProgress(BaseModel):
    """One step of one update attempt."""

    model_config = WIRE_CONFIG

    # Same for every step of one attempt.
    update_id: Name
    trigger: UpdateTrigger
    # The command that prompted it, for trigger hint / rollback.
    cmd_msg_id: MsgId | None = None
    # The bundle being installed; None until the refresh step has found it.
    target: ModelRef | None = None
    step: UpdateStep
    state: StepState
    progress: Fraction | None = None
    # Why a step failed or was skipped, for people.
    detail: Text | None = None


class ModelReport(Envelope):
    """Current and previous model of a line, with the latest update step if any."""

    KIND = TopicKind.MODEL

    schema_id: Literal["lineguard.model/1"] = Field("lineguard.model/1", alias="schema")
    # None while no model is active (parts are then `uninspected`).
    current: ModelRef | None
    previous: ModelRef | None = None
    update: UpdateProgress | None = None
