"""The fields every lineguard message carries, whatever its topic.

`schema` names the payload model and its version (`lineguard.<kind>/<N>`), `msg_id`
is unique per message (consumers de-duplicate on it: QoS 1 delivers at least once and
the appliance's outbox re-sends after an outage), `site` and `line` must equal the
topic's, and `sent_at` is when the producer created the message, in UTC.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field

from protocol.fields import WIRE_CONFIG, LineId, MsgId, SiteId, UtcTimestamp
from protocol.topics import TopicKind


class Envelope(BaseModel):
    """Base of every payload model. Subclasses fix `schema` to one literal value."""

    model_config = WIRE_CONFIG

    # The topic kind this model is published on; set by each subclass.
    KIND: ClassVar[TopicKind]

    # Named `schema_id` in Python (pydantic's BaseModel owns `schema`); `schema` on the wire.
    schema_id: str = Field(alias="schema", max_length=64)
    # Producers pass `new_msg_id()`; a re-sent message keeps its id.
    msg_id: MsgId
    site: SiteId
    line: LineId
    sent_at: UtcTimestamp
