"""Which payload model reads which `schema`, and on which topic kind it belongs.

To add a schema version: write the new model class (a new `schema_id` literal, e.g.
`lineguard.status/2`), add it to `MESSAGE_TYPES` and to the `Message` union, keep the
old model, and regenerate the JSON Schemas (`python -m protocol.schemas`).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

from protocol.alerts import AlertCommand
from protocol.commands import RollbackCommand, UpdateCommand
from protocol.defect import DefectEvent, DefectEventV1
from protocol.drift import DriftSketch, DriftSketchV2
from protocol.metrics import MetricsMessage, MetricsMessageV1
from protocol.model_report import ModelReport
from protocol.status import StatusMessage

Message = (
    StatusMessage
    | MetricsMessage
    | MetricsMessageV1
    | DefectEvent
    | DefectEventV1
    | DriftSketch
    | DriftSketchV2
    | ModelReport
    | UpdateCommand
    | RollbackCommand
    | AlertCommand
)

MESSAGE_TYPES: Final[tuple[type[Message], ...]] = (
    StatusMessage,
    MetricsMessage,
    MetricsMessageV1,
    DefectEvent,
    DefectEventV1,
    DriftSketch,
    DriftSketchV2,
    ModelReport,
    UpdateCommand,
    RollbackCommand,
    AlertCommand,
)


LEGACY_TYPES: Final[tuple[type[Message], ...]] = (MetricsMessageV1, DriftSketch, DefectEventV1)
"""Older versions consumers still read and lines no longer send (kept while outboxes of
older lines may hold them)."""


def schema_of(model: type[Message]) -> str:
    """Return the `schema` value a payload model writes, e.g. `lineguard.status/1`."""
    default = model.model_fields["schema_id"].default
    if not isinstance(default, str):
        raise TypeError(f"{model.__name__}.schema_id has no str default")
    return default


SCHEMAS: Final = MappingProxyType({schema_of(model): model for model in MESSAGE_TYPES})
