"""The model registry: every bundle the cloud made or imported, its files, lineage,
gate outcome and state.

Invariants:
- A model is `name@version` (the bundle manifest's name and version), registered once.
  Registering it again with the same content (manifest and weights) returns the entry;
  with different content raises DuplicateModel and changes nothing.
- Its files live under `<root>/<name>/<version>/`: `bundle/` (verified with
  `models.bundle.load_bundle` before it is registered), `weights.pt` when given, and
  `gate/report.json` + `gate/report.html` once the gate ran. They are staged in a
  temporary folder beside it and renamed into place inside the database transaction
  that inserts the row, so a model is either fully registered or absent (a crash can
  leave a `.staging-*` folder, removed on the next add).
- States move only along `TRANSITIONS`; every change (and the registration) is a row of
  the history with who, why and when. A refused model is never approved or released.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from sqlalchemy import Connection, Engine, RowMapping, func, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from cloud.registry import tables
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
from models.bundle import MANIFEST, file_sha256, load_bundle
from models.errors import ModelError
from protocol.atomic import atomic_write_text, fsync_dir

logger = logging.getLogger(__name__)

BUNDLE_DIR = "bundle"
WEIGHTS = "weights.pt"
GATE_DIR = "gate"
GATE_JSON = "report.json"
GATE_HTML = "report.html"
INITIAL_STATES: frozenset[ModelState] = frozenset({"candidate", "approved"})


def _ms_to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, UTC)


class ModelRegistry:
    """The registry over an engine (cloud/db, migrated) and a files root."""

    def __init__(self, engine: Engine, root: Path,
                 clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self._engine = engine
        self.engine = engine
        self.root = Path(root)
        self._clock_ms = clock_ms

    # -- paths ------------------------------------------------------------------

    def model_dir(self, name: str, version: int) -> Path:
        return self.root / name / str(version)

    @contextmanager
    def _begin(self, what: str) -> Iterator[Connection]:
        try:
            with self._engine.begin() as conn:
                yield conn
        except IntegrityError:
            raise  # a concurrent registration: `add` handles it
        except SQLAlchemyError as e:
            raise RegistryError(f"{what}: database error: {e}") from e

    # -- registering ----------------------------------------------------------------

    def add(
        self,
        bundle_dir: Path,
        *,
        weights: Path | None = None,
        lineage: RegistryLineage | None = None,
        state: ModelState = "candidate",
        source: str,
        by: str = "lineguard",
    ) -> ModelEntry:
        """Register a bundle directory (and its Ultralytics weights) under its
        manifest's name and version. `state`: candidate (the gate decides) or approved
        (an engineer vouches for an imported production model). `source` says where it
        came from ("retrain", "import: <path>").

        Raises RegistryError (the bundle fails verification, a file cannot be copied,
        a bad state), DuplicateModel (name@version registered with other content).
        """
        if state not in INITIAL_STATES:
            raise RegistryError(f"a model is registered as candidate or approved, not {state!r}")
        lineage = lineage or RegistryLineage()
        try:
            bundle = load_bundle(Path(bundle_dir))
        except ModelError as e:
            raise RegistryError(f"{bundle_dir}: not a valid bundle: {e}") from e
        if weights is not None and not Path(weights).is_file():
            raise RegistryError(f"weights {weights}: no such file")
        name, version = bundle.manifest.name, bundle.manifest.version
        content = _content_sha256(bundle.root, weights)
        existing = self._find(name, version)
        if existing is not None:
            return self._same_or_duplicate(existing, content)

        parent = self.model_dir(name, version).parent
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(parent)
        staging = parent / f".staging-{version}-{secrets.token_hex(4)}"
        try:
            staging.mkdir()
            shutil.copytree(bundle.root, staging / BUNDLE_DIR)
            if weights is not None:
                shutil.copyfile(weights, staging / WEIGHTS)
            load_bundle(staging / BUNDLE_DIR)  # the copy, verified
            _fsync_tree(staging)
        except (OSError, ModelError) as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise RegistryError(f"copying {bundle_dir} into the registry failed: {e}") from e

        now = self._clock_ms()
        final = self.model_dir(name, version)
        try:
            with self._begin(f"registering {name}@{version}") as conn:
                conn.execute(insert(tables.models).values(
                    name=name, version=version, label=bundle.manifest.label, state=state,
                    source=source, content_sha256=content, has_weights=weights is not None,
                    gate_passed=None,
                    parent_name=lineage.parent.name if lineage.parent else None,
                    parent_version=lineage.parent.version if lineage.parent else None,
                    dataset_ref=lineage.dataset.ref if lineage.dataset else None,
                    dataset_fingerprint=lineage.dataset.fingerprint if lineage.dataset else None,
                    holdout_ref=lineage.holdout, created_at_ms=now, state_changed_at_ms=now))
                self._record(conn, name, version, None, state, f"registered ({source})", by, now)
                if final.exists():  # files of a registration whose row never committed
                    shutil.rmtree(final)
                os.replace(staging, final)
                fsync_dir(parent)
        except IntegrityError:
            # Another process registered it between our look and our insert.
            shutil.rmtree(staging, ignore_errors=True)
            return self._same_or_duplicate(self.get(name, version), content)
        except (RegistryError, OSError) as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise RegistryError(f"registering {name}@{version} failed: {e}") from e
        logger.info("registered %s@%d as %s (%s)", name, version, state, source)
        return self.get(name, version)

    def _same_or_duplicate(self, existing: ModelEntry, content: str) -> ModelEntry:
        with self._begin("reading the registry") as conn:
            stored = conn.execute(select(tables.models.c.content_sha256).where(
                tables.models.c.name == existing.name,
                tables.models.c.version == existing.version)).scalar_one()
        if stored != content:
            raise DuplicateModel(
                f"{existing.name}@{existing.version} is already registered with different "
                "content (bundle or weights); give the new model another version")
        return existing

    # -- reading -------------------------------------------------------------------

    def _find(self, name: str, version: int) -> ModelEntry | None:
        with self._begin("reading the registry") as conn:
            row = conn.execute(select(tables.models).where(
                tables.models.c.name == name, tables.models.c.version == version)).first()
        return self._entry(row._mapping) if row is not None else None

    def get(self, name: str, version: int) -> ModelEntry:
        """The entry of name@version. Raises UnknownModel."""
        entry = self._find(name, version)
        if entry is None:
            raise UnknownModel(f"no model {name}@{version} in the registry")
        return entry

    def list(self, name: str | None = None) -> list[ModelEntry]:
        """Every model (or every version of `name`), by name then version."""
        query = select(tables.models).order_by(tables.models.c.name, tables.models.c.version)
        if name is not None:
            query = query.where(tables.models.c.name == name)
        with self._begin("reading the registry") as conn:
            return [self._entry(row._mapping) for row in conn.execute(query)]

    def next_version(self, name: str) -> int:
        """One more than the highest registered version of `name` (1 for a new name)."""
        with self._begin("reading the registry") as conn:
            top = conn.execute(select(func.max(tables.models.c.version)).where(
                tables.models.c.name == name)).scalar()
        return int(top or 0) + 1

    def history(self, name: str, version: int) -> builtins.list[StateChange]:
        """The model's registration and every state change since, oldest first.
        Raises UnknownModel."""
        self.get(name, version)
        ev = tables.events
        with self._begin("reading the registry") as conn:
            rows = conn.execute(select(ev).where(ev.c.name == name, ev.c.version == version)
                                .order_by(ev.c.id)).all()
        return [StateChange(from_state=cast(ModelState | None, r.from_state),
                            to_state=cast(ModelState, r.to_state), reason=r.reason, by=r.by,
                            at=_ms_to_dt(r.at_ms)) for r in rows]

    def _entry(self, row: RowMapping) -> ModelEntry:
        folder = self.model_dir(row["name"], int(row["version"]))
        parent = (ModelRef(row["parent_name"], int(row["parent_version"]))
                  if row["parent_name"] is not None else None)
        dataset = (DatasetUse(row["dataset_ref"], row["dataset_fingerprint"] or "")
                   if row["dataset_ref"] is not None else None)
        gate = folder / GATE_DIR / GATE_JSON
        return ModelEntry(
            name=row["name"], version=int(row["version"]), label=row["label"],
            state=cast(ModelState, row["state"]), source=row["source"],
            bundle_dir=folder / BUNDLE_DIR,
            weights_path=folder / WEIGHTS if row["has_weights"] else None,
            gate_passed=row["gate_passed"],
            gate_report_path=gate if row["gate_passed"] is not None else None,
            parent=parent, dataset=dataset, holdout=row["holdout_ref"],
            created_at=_ms_to_dt(row["created_at_ms"]),
            state_changed_at=_ms_to_dt(row["state_changed_at_ms"]))

    # -- gate and state ----------------------------------------------------------------

    def record_gate(self, name: str, version: int, report: GateReport, *,
                    approve: bool = True, by: str = "gate") -> ModelEntry:
        """Store the gate's report with a candidate (report.json and report.html) and
        move it: refused when the gate failed; approved when it passed and `approve`
        (else it stays a candidate with `gate_passed`, for an engineer to promote).
        Raises UnknownModel, StateTransitionRefused (not a candidate), RegistryError."""
        from cloud.registry.gate_html import render_gate_html

        entry = self.get(name, version)
        if entry.state != "candidate":
            raise StateTransitionRefused(
                f"{name}@{version} is {entry.state}; only a candidate goes through the gate")
        gate_dir = self.model_dir(name, version) / GATE_DIR
        try:
            gate_dir.mkdir(exist_ok=True)
            atomic_write_text(gate_dir / GATE_HTML, render_gate_html(report))
            atomic_write_text(gate_dir / GATE_JSON,
                              report.model_dump_json(by_alias=True, indent=2) + "\n")
        except OSError as e:
            raise RegistryError(f"writing the gate report of {name}@{version}: {e}") from e
        target: ModelState = ("refused" if not report.passed
                              else "approved" if approve else "candidate")
        reason = ("gate passed" if report.passed
                  else "gate refused: " + "; ".join(report.reasons))
        now = self._clock_ms()
        with self._begin(f"recording the gate of {name}@{version}") as conn:
            conn.execute(update(tables.models).where(
                tables.models.c.name == name, tables.models.c.version == version)
                .values(gate_passed=report.passed))
            if target != entry.state:
                self._move(conn, entry, target, reason, by, now)
        logger.info("%s@%d: %s", name, version, reason)
        return self.get(name, version)

    def set_state(self, name: str, version: int, state: ModelState, *,
                  reason: str, by: str) -> ModelEntry:
        """Move a model to `state` (see `TRANSITIONS`); approving needs a passed gate.
        Raises UnknownModel, StateTransitionRefused saying why, RegistryError."""
        if state not in STATES:
            raise StateTransitionRefused(f"unknown state {state!r}; states: {', '.join(STATES)}")
        if not reason.strip() or not by.strip():
            raise StateTransitionRefused("a state change needs a reason and who made it")
        now = self._clock_ms()
        with self._begin(f"changing the state of {name}@{version}") as conn:
            row = conn.execute(select(tables.models).where(
                tables.models.c.name == name, tables.models.c.version == version)).first()
            if row is None:
                raise UnknownModel(f"no model {name}@{version} in the registry")
            entry = self._entry(row._mapping)
            if state == entry.state:
                return entry
            if state == "approved" and entry.gate_passed is not True:
                raise StateTransitionRefused(
                    f"{name}@{version} cannot be approved: "
                    + ("its gate refused it" if entry.gate_passed is False
                       else "the gate has not passed it (run the gate first)"))
            self._move(conn, entry, state, reason, by, now)
        logger.info("%s@%d: %s -> %s by %s: %s", name, version, entry.state, state, by, reason)
        return self.get(name, version)

    def _move(self, conn: Connection, entry: ModelEntry, state: ModelState, reason: str,
              by: str, now: int) -> None:
        if state not in TRANSITIONS[entry.state]:
            allowed = ", ".join(sorted(TRANSITIONS[entry.state])) or "none (final)"
            raise StateTransitionRefused(
                f"{entry.name}@{entry.version} is {entry.state}: it cannot become {state} "
                f"(allowed: {allowed})")
        # Compare-and-set on the state: a concurrent change makes this update miss.
        changed = conn.execute(update(tables.models).where(
            tables.models.c.name == entry.name, tables.models.c.version == entry.version,
            tables.models.c.state == entry.state).values(state=state, state_changed_at_ms=now))
        if changed.rowcount != 1:
            raise StateTransitionRefused(
                f"{entry.name}@{entry.version} changed state meanwhile; try again")
        self._record(conn, entry.name, entry.version, entry.state, state, reason, by, now)

    @staticmethod
    def _record(conn: Connection, name: str, version: int, from_state: ModelState | None,
                to_state: ModelState, reason: str, by: str, now: int) -> None:
        conn.execute(insert(tables.events).values(
            name=name, version=version, from_state=from_state, to_state=to_state,
            reason=reason, by=by, at_ms=now))


def _content_sha256(bundle_root: Path, weights: Path | None) -> str:
    # The manifest lists every bundle file's sha256, so hashing it covers the bundle.
    h = hashlib.sha256(file_sha256(bundle_root / MANIFEST).encode())
    h.update((file_sha256(weights) if weights is not None else "-").encode())
    return h.hexdigest()


def _remove_stale_staging(folder: Path) -> None:
    for child in folder.glob(".staging-*"):
        # Only folders older than an hour: another process may be staging right now.
        try:
            if time.time() - child.stat().st_mtime > 3600:
                shutil.rmtree(child, ignore_errors=True)
        except OSError:
            continue


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(Path(dirpath) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))
