"""The model registry: every bundle the cloud made or imported, with its Ultralytics
weights, lineage, gate report and state (candidate, refused, approved, released).
See docs/retraining.md."""

from cloud.registry.entry import (
    STATES,
    TRANSITIONS,
    DatasetUse,
    ModelEntry,
    ModelRef,
    ModelState,
    RegistryLineage,
    StateChange,
)
from cloud.registry.errors import (
    DuplicateModel,
    RegistryError,
    StateTransitionRefused,
    UnknownModel,
)
from cloud.registry.gate_report import GateReport
from cloud.registry.store import ModelRegistry

__all__ = [
    "STATES",
    "TRANSITIONS",
    "DatasetUse",
    "DuplicateModel",
    "GateReport",
    "ModelEntry",
    "ModelRef",
    "ModelRegistry",
    "ModelState",
    "RegistryError",
    "RegistryLineage",
    "StateChange",
    "StateTransitionRefused",
    "UnknownModel",
]
