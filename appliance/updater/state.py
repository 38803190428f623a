"""The update state: which bundle is active, which ran before it, and the trial counter,
in one small JSON file written atomically (protocol/atomic.py).

Invariants:
- the file is replaced whole (temp, fsync, rename, fsync dir): after a power cut it holds
  either the old or the new state, never a mix;
- a new bundle becomes `active` with a `trial` (failed_starts 0) in the file BEFORE it
  is first loaded; only the health window's commit clears the trial;
- every start during a trial counts one failed start before the model loads; a bundle
  whose counter reached `max_failed_starts` is abandoned at the next start and the
  previous bundle comes back (`boot_choice`, pure);
- `last_sequence` only grows: an assignment at or below it is never acted on again.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.updater.errors import UpdateStateError
from protocol.atomic import atomic_write_bytes

STATE_FILE = "state.json"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BundleRef(_Model):
    """A verified bundle on this machine."""

    version_id: str = Field(min_length=3, max_length=300)
    """``"<name>:<version>"`` as recorded with every verdict."""
    path: str = Field(min_length=1, max_length=4096)
    """The unpacked bundle directory."""
    tree_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Digest of the directory's files (`verified.tree_sha256`) when it was verified."""
    tar_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    """The signed tar it came from (None: the configured bundle)."""
    sequence: int | None = None
    """The assignment that brought it (None: the configured bundle, or a local rollback)."""


class Trial(_Model):
    """A bundle being staged (`activated` False: the active one still runs) or on trial
    after its swap (`activated` True: it is `active`, the one before is `previous`)."""

    bundle: BundleRef
    sequence: int | None = None
    activated: bool = False
    failed_starts: int = Field(0, ge=0)
    since: datetime


class Note(_Model):
    """Something done while the appliance was not running (an offline rollback), turned
    into an event at the next start."""

    at: datetime
    kind: str
    message: str
    who: str


class UpdateState(_Model):
    active: BundleRef | None = None
    previous: BundleRef | None = None
    trial: Trial | None = None
    last_sequence: int = Field(0, ge=0)
    abandoned: tuple[str, ...] = ()
    """version ids abandoned after failed starts or refused (never tried again unless a
    newer assignment names them)."""
    notes: tuple[Note, ...] = ()


def now_utc() -> datetime:
    return datetime.now(UTC)


class StateFile:
    """`<cache_dir>/state.json`. Not thread-safe: the agent (or the offline rollback
    command, holding the agent lock) owns it."""

    def __init__(self, cache_dir: Path) -> None:
        self.path = Path(cache_dir) / STATE_FILE

    def load(self) -> UpdateState:
        """The state (an empty one if there is no file). Raises UpdateStateError for an
        unreadable or invalid file (never silently forgotten: it names the active bundle)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return UpdateState()
        except OSError as e:
            raise UpdateStateError(f"{self.path}: cannot read the update state: {e}") from e
        try:
            return UpdateState.model_validate_json(raw)
        except ValidationError as e:
            raise UpdateStateError(f"{self.path}: invalid update state: {e}") from e

    def save(self, state: UpdateState) -> None:
        """Replace the file atomically and durably. Raises UpdateStateError."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, json.dumps(
                state.model_dump(mode="json"), indent=2, sort_keys=True).encode())
        except OSError as e:
            raise UpdateStateError(f"{self.path}: cannot write the update state: {e}") from e


def begin_staging(state: UpdateState, new: BundleRef, sequence: int | None) -> UpdateState:
    """The state to persist before `new` is first loaded (golden set, shadow run): a
    staging trial; the active bundle stays. A retry of the same staging keeps its
    counter."""
    if state.trial is not None and state.trial.bundle == new and not state.trial.activated:
        return state
    return state.model_copy(update={"trial": Trial(bundle=new, sequence=sequence,
                                                   since=now_utc())})


def activated(state: UpdateState) -> UpdateState:
    """The state to persist just before the staged bundle replaces the active one."""
    if state.trial is None:
        raise UpdateStateError("no bundle is being staged")
    new = state.trial.bundle
    return state.model_copy(update={
        "active": new, "previous": state.active,
        "trial": state.trial.model_copy(update={"activated": True})})


def _done_sequence(state: UpdateState) -> int:
    seq = state.trial.sequence if state.trial is not None else None
    return max(state.last_sequence, seq or 0)


def commit(state: UpdateState) -> UpdateState:
    """The health window passed: the active bundle is kept (no trial)."""
    return state.model_copy(update={"trial": None, "last_sequence": _done_sequence(state)})


def refuse(state: UpdateState, sequence: int | None = None) -> UpdateState:
    """The staged bundle was refused (or abandoned before its swap): the active one stays,
    the assignment that brought it is done with."""
    abandoned = state.abandoned
    if state.trial is not None and state.trial.bundle.version_id not in abandoned:
        abandoned = (*abandoned, state.trial.bundle.version_id)[-20:]
    return state.model_copy(update={
        "trial": None, "abandoned": abandoned,
        "last_sequence": max(_done_sequence(state), sequence or 0)})


def roll_back(state: UpdateState, to: BundleRef | None = None, *,
              abandon: bool = True) -> UpdateState:
    """Back to `to` (default: the previous bundle); with `abandon`, the active one is
    recorded as abandoned. Raises UpdateStateError when there is nothing to go back to."""
    target = to or state.previous
    if target is None:
        raise UpdateStateError("no previous bundle to roll back to")
    old = state.active
    abandoned = state.abandoned
    if abandon and old is not None and old.version_id not in abandoned:
        abandoned = (*abandoned, old.version_id)[-20:]
    previous = old if old is not None and old.version_id != target.version_id else state.previous
    return state.model_copy(update={
        "active": target, "previous": previous, "trial": None, "abandoned": abandoned,
        "last_sequence": _done_sequence(state)})


def boot_choice(state: UpdateState, max_failed_starts: int) -> tuple[UpdateState, str]:
    """What to do at start, before any model loads: returns the state to persist and
    what happened: "none" (no trial), "trial" (one more start counted), "abandoned"
    (a swapped-in bundle ran out of starts: back to the previous one) or
    "abandoned_staging" (a bundle being staged ran out of starts: never swapped in)."""
    trial = state.trial
    if trial is None:
        return state, "none"
    if trial.failed_starts >= max_failed_starts:
        if not trial.activated:
            return refuse(state), "abandoned_staging"
        if state.previous is not None:
            return roll_back(state), "abandoned"
    counted = trial.model_copy(update={"failed_starts": trial.failed_starts + 1})
    return state.model_copy(update={"trial": counted}), "trial"
