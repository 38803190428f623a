"""What the panel needs from the rest of the appliance: small protocols, so the web layer
is typed against seams rather than concrete classes (appliance/users.py, alarms.py,
labels.py, panel/metrics.py and the updater fit them).

Errors: for an unknown id a collaborator raises `UnknownAlarm` / `UnknownFrame` (or a
`LookupError`), for input it refuses `BadLabel` (or a `ValueError`); the web layer
answers 404 and 422.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

Role = Literal["operator", "engineer"]
ROLES: tuple[Role, ...] = ("operator", "engineer")
LabelKind = Literal["confirm", "reject", "missed"]


class PanelUser(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def role(self) -> str: ...


class UserDirectory(Protocol):
    def authenticate(self, name: str, password: str) -> PanelUser | None: ...


class PanelAlarm(Protocol):
    @property
    def id(self) -> int: ...

    @property
    def code(self) -> str: ...

    @property
    def severity(self) -> str: ...

    @property
    def station(self) -> str | None: ...

    @property
    def message(self) -> str: ...

    @property
    def raised_at_s(self) -> float: ...

    @property
    def cleared_at_s(self) -> float | None: ...

    @property
    def acked_at_s(self) -> float | None: ...

    @property
    def acked_by(self) -> str | None: ...

    @property
    def active(self) -> bool: ...


class AlarmDesk(Protocol):
    def current(self) -> Sequence[PanelAlarm]: ...

    def history(self, limit: int) -> Sequence[PanelAlarm]: ...

    def acknowledge(self, alarm_id: int, by: str) -> PanelAlarm: ...


class LabelDesk(Protocol):
    def add(self, frame_id: str, kind: LabelKind, author: str, defect_index: int | None = None,
            class_name: str | None = None,
            box_xyxy: tuple[float, float, float, float] | None = None) -> Any: ...

    def for_frame(self, frame_id: str) -> Sequence[Any]: ...


class MetricsExporter(Protocol):
    def render(self) -> tuple[bytes, str]: ...


class RollbackUnavailable(Exception):
    """There is no bundle to roll back to (or the updater refuses now)."""


class RollbackControl(Protocol):
    """The seam the updater implements: what a rollback would go back to, and doing it."""

    def previous(self) -> str | None:
        """The version id a rollback would activate, None when there is none."""
        ...

    def rollback(self, by: str) -> str:
        """Roll back now (asked by user `by`); returns the version id now active.
        Raises RollbackUnavailable."""
        ...


class NoRollback:
    """The rollback control until the updater exists: there is no previous bundle."""

    def previous(self) -> str | None:
        return None

    def rollback(self, by: str) -> str:
        raise RollbackUnavailable("no previous bundle: this appliance keeps no other model")
