"""`cmd/alert`: an alarm from the cloud for one line's panel (e.g. a drift alert).

Shown to the operator as an alarm; never acted on otherwise (anything on MQTT could
have been published by anyone with broker access). `alert_id` names the alert in the
cloud (the fleet API shows it); a line that receives the same alert twice (QoS 1 is at
least once) shows it once.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from protocol.envelope import Envelope
from protocol.fields import ModelRef, Name, ShortText, UtcTimestamp
from protocol.topics import TopicKind

# Free text, one or more lines (no other control characters).
AlertText = Annotated[
    str, Field(min_length=1, max_length=1000, pattern=r"^[^\x00-\x09\x0b-\x1f\x7f]*$")
]


class AlertCommand(Envelope):
    """An alarm the cloud raises on a line (a hint for the operator, not a command)."""

    KIND = TopicKind.ALERT_COMMAND

    schema_id: Literal["lineguard.cmd.alert/1"] = Field("lineguard.cmd.alert/1", alias="schema")
    alert_id: Name
    # An alarm code, e.g. `drift`; the panel shows it beside the line's own alarms.
    code: Name
    severity: Literal["info", "warning", "critical"]
    message: AlertText
    station: Name | None = None
    model: ModelRef | None = None
    # The signals that moved, largest first (drift alerts).
    channels: list[ShortText] = Field(default_factory=list, max_length=16)
    # When the condition began (drift: the estimated onset) and when the cloud raised it.
    began_at: UtcTimestamp | None = None
    raised_at: UtcTimestamp
    issued_by: ShortText
