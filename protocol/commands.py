"""`cmd/update` and `cmd/rollback`: hints from the cloud to one line.

Hints only: anything on MQTT could have been published by anyone with broker access,
so a line never acts on a command's content alone. `cmd/update` makes it run a TUF
refresh now instead of at the next poll; `cmd/rollback` makes it check its signed
assignment now (an engineer's rollback is a new signed assignment pointing at the old
bundle). The fields say what the sender expects, for logs and for the `model` report.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from protocol.envelope import Envelope
from protocol.fields import ModelVersion, Name, ShortText, Text
from protocol.topics import TopicKind


class UpdateCommand(Envelope):
    """Ask a line to check for a new model now (a hint, not trusted)."""

    KIND = TopicKind.UPDATE_COMMAND

    schema_id: Literal["lineguard.cmd.update/1"] = Field("lineguard.cmd.update/1", alias="schema")
    target_name: Name | None = None
    target_version: ModelVersion | None = None
    reason: Text | None = None
    # Person or service that asked; for the record only.
    issued_by: ShortText


class RollbackCommand(Envelope):
    """Ask a line to check its assignment now because of a rollback (a hint, not trusted)."""

    KIND = TopicKind.ROLLBACK_COMMAND

    schema_id: Literal["lineguard.cmd.rollback/1"] = Field(
        "lineguard.cmd.rollback/1", alias="schema"
    )
    # The version the sender expects the line to go back to; None: the previous one.
    target_version: ModelVersion | None = None
    reason: Text | None = None
    issued_by: ShortText
