"""`status`: is the line's appliance online, what does it run, how are its sources.

Retained. The appliance registers an `offline` status with reason `connection_lost` as
its MQTT last will on every connect, and publishes `offline` / `shutdown` itself on an
orderly stop, so a retained `online` never outlives the process.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, model_validator

from protocol.envelope import Envelope
from protocol.fields import ModelRef, Name, ShortText, UtcTimestamp, new_msg_id
from protocol.topics import TopicKind

LineState = Literal["online", "offline"]
OfflineReason = Literal["shutdown", "connection_lost"]
# The appliance's capture states (appliance.capture.SourceState): connecting: opening the
# device or stream (first time or a reconnect attempt); streaming: open and delivering
# frames; lost: gone or failed to open, waiting (backoff) before the next attempt; ended:
# no more frames (a file or folder that does not loop) or stopped.
SourceState = Literal["connecting", "streaming", "lost", "ended"]


class StatusMessage(Envelope):
    """A line's appliance state (retained on `status`)."""

    KIND = TopicKind.STATUS

    schema_id: Literal["lineguard.status/1"] = Field("lineguard.status/1", alias="schema")
    state: LineState
    # Set only when `state` is offline; `connection_lost` is the last will.
    reason: OfflineReason | None = None
    app_version: ShortText | None = None
    started_at: UtcTimestamp | None = None
    model: ModelRef | None = None
    # Capture source state per station id.
    sources: dict[Name, SourceState] = Field(default_factory=dict, max_length=64)
    # Active alarm codes, e.g. camera_lost, model_fallback, engine_cpu_fallback, disk_low.
    alarms: list[Name] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _reason_only_when_offline(self) -> StatusMessage:
        if self.state == "online" and self.reason is not None:
            raise ValueError("reason is only set when state is offline")
        if len(set(self.alarms)) != len(self.alarms):
            raise ValueError("alarms must not repeat")
        return self


def last_will(
    site: str, line: str, sent_at: datetime, app_version: str | None = None
) -> StatusMessage:
    """The `offline` / `connection_lost` status to register as MQTT last will on connect.

    `sent_at` is when the will is registered (the broker publishes it later, when the
    connection dies); build a new one, with a new `msg_id`, for every connect.
    """
    return StatusMessage(
        msg_id=new_msg_id(),
        site=site,
        line=line,
        sent_at=sent_at,
        state="offline",
        reason="connection_lost",
        app_version=app_version,
    )
