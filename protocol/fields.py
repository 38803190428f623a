"""Constrained field types and small value models shared by every payload.

Every string on the wire has a length bound and, where it is an identifier, a
pattern; every count is a non-negative integer no larger than 2**53 - 1 (so a
JavaScript consumer reads it exactly); every float is finite. Timestamps must carry
a UTC offset and are normalised to UTC.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Final

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

# Site and line ids: they become topic levels, so they can never hold `/`, `+` or `#`.
ID_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,62}$"
# A uuid4 in lowercase hex without dashes, or a ULID (Crockford base32, 26 chars).
MSG_ID_PATTERN: Final = r"^(?:[0-9a-f]{32}|[0-7][0-9A-HJKMNP-TV-Z]{25})$"
# Machine names chosen by us or by a plant's config: stations, stages, queues, reasons,
# alarm codes, execution providers, bundle names.
NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
# Free text with no control characters (class names come from labelling tools).
PRINTABLE_PATTERN: Final = r"^[^\x00-\x1f\x7f]*$"

MAX_SAFE_INT: Final = 2**53 - 1

WIRE_CONFIG: Final = ConfigDict(
    strict=True,
    extra="forbid",
    frozen=True,
    allow_inf_nan=False,
    validate_by_alias=True,
    validate_by_name=False,
    serialize_by_alias=True,
)


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


SiteId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
LineId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
MsgId = Annotated[str, StringConstraints(pattern=MSG_ID_PATTERN)]
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
ClassName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=PRINTABLE_PATTERN)
]
ShortText = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=PRINTABLE_PATTERN)
]
Text = Annotated[str, StringConstraints(max_length=1000)]
UtcTimestamp = Annotated[AwareDatetime, AfterValidator(_to_utc)]
Count = Annotated[int, Field(ge=0, le=MAX_SAFE_INT)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Milliseconds = Annotated[float, Field(ge=0.0, le=86_400_000.0)]
ModelVersion = Annotated[int, Field(ge=0, le=MAX_SAFE_INT)]


def new_msg_id() -> str:
    """Return a fresh message id: a random uuid4 as 32 lowercase hex digits."""
    return uuid.uuid4().hex


class ModelRef(BaseModel):
    """Which model bundle: its name, monotonic integer version and human label."""

    model_config = WIRE_CONFIG

    name: Name
    version: ModelVersion
    label: ShortText | None = None
