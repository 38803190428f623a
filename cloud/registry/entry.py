"""What the registry says about one model: plain, frozen values (no IO here)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, NamedTuple, get_args

ModelState = Literal["candidate", "refused", "approved", "released"]
STATES: tuple[ModelState, ...] = get_args(ModelState)

TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    "candidate": frozenset({"approved", "refused"}),
    "approved": frozenset({"released", "refused"}),
    "released": frozenset({"refused"}),
    "refused": frozenset(),
}
"""Allowed state changes. `refused` is final: a refused model is never approved or
released. `released` is reached only through the release command (it publishes)."""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ModelRef(NamedTuple):
    """A registered model's identity, written `name@version`."""

    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """`name@version` -> ModelRef. Raises ValueError saying what is wrong."""
        name, sep, version = text.rpartition("@")
        if not sep or not _NAME_RE.fullmatch(name) or not version.isdigit() or int(version) < 1:
            raise ValueError(f"{text!r} is not MODEL@VERSION (e.g. demo@1)")
        return cls(name, int(version))


class DatasetUse(NamedTuple):
    """The data a model was trained on: a dataset reference (`NAME@VERSION` of the
    dataset index, or a path) and its content fingerprint."""

    ref: str
    fingerprint: str


@dataclass(frozen=True)
class RegistryLineage:
    """Where a model came from, as the registry records it. `holdout`: the dataset
    (reference or data.yaml path) whose val split is this model's holdout; the gate
    evaluates its children there too."""

    parent: ModelRef | None = None
    dataset: DatasetUse | None = None
    holdout: str | None = None


@dataclass(frozen=True)
class ModelEntry:
    """One registered model. Paths are inside the registry root; `weights_path` is None
    when no `.pt` was registered (such a model cannot be fine-tuned), `gate_report_path`
    (report.json; report.html beside it) None until the gate ran."""

    name: str
    version: int
    label: str
    state: ModelState
    source: str
    bundle_dir: Path
    weights_path: Path | None
    gate_passed: bool | None
    gate_report_path: Path | None
    parent: ModelRef | None
    dataset: DatasetUse | None
    holdout: str | None
    created_at: datetime
    state_changed_at: datetime

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, self.version)


@dataclass(frozen=True)
class StateChange:
    """One entry of a model's history: `from_state` None for its registration."""

    from_state: ModelState | None
    to_state: ModelState
    reason: str
    by: str
    at: datetime
