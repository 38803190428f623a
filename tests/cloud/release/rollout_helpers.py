"""A rollout world: a cloud database, a registry with demo@1 and demo@2 released, a TUF
repository, a real fleet store fed with protocol messages, and a controlled clock."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine

from cloud.db import DatabaseConfig
from cloud.fleet import FleetStore, Received
from cloud.registry import ModelRegistry
from cloud.release.config import HealthBounds
from cloud.release.publish import assign_line, publish_release
from cloud.release.repository import Repository
from cloud.release.store import ReleaseStore
from cloud.rollout.service import RolloutService
from protocol import Message, MetricsMessage, ModelRef, encode
from protocol.model_report import UpdateProgress
from tests.cloud.fleet_helpers import metrics, model_report
from tests.cloud.registry.helpers import demo_copy
from tests.cloud.release.test_publish import gate

T0 = datetime(2026, 12, 1, 8, 0, 0, tzinfo=UTC)
LINES = ("plant1/line-1", "plant1/line-2", "plant1/line-3")
BOUNDS = HealthBounds(health_window_s=60, activation_timeout_s=600, min_parts=100,
                      max_latency_p99_ms=200.0, baseline_window_s=600)


@dataclass
class Clock:
    now: datetime = T0

    def ms(self) -> int:
        return int(self.now.timestamp() * 1000)

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@dataclass
class RecordingHinter:
    sent: list[tuple[str, str, str, int]] = field(default_factory=list)

    def update(self, site: str, line: str, model: str, version: int, reason: str) -> None:
        self.sent.append(("update", f"{site}/{line}", model, version))

    def rollback(self, site: str, line: str, version: int, reason: str) -> None:
        self.sent.append(("rollback", f"{site}/{line}", "", version))


class World:
    def __init__(self, engine: Engine, repo: Repository, tmp: Path) -> None:
        self.clock = Clock()
        self.store = ReleaseStore(engine, clock_ms=self.clock.ms)
        self.repo = repo
        url = engine.url.render_as_string(hide_password=False)
        self.fleet = FleetStore(DatabaseConfig(url=url),
                                clock=lambda: self.clock.now.timestamp())
        self.hinter = RecordingHinter()
        registry = ModelRegistry(engine, tmp / "registry")
        registry.add(demo_copy(tmp / "b1", version=1).root, state="approved", source="import")
        registry.add(demo_copy(tmp / "b2", version=2).root, source="retrain")
        registry.record_gate("demo", 2, gate(True))
        for version in (1, 2):
            publish_release(repo, registry, self.store, "demo", version, by="alice")
        for name in LINES:
            site, line = name.split("/")
            assign_line(repo, self.store, site, line, "demo", 1, stage="manual", by="alice")
            self.report(name, current=1)
            self.metrics(name, version=1, at=T0 - timedelta(seconds=30), failed=10)

    def service(self) -> RolloutService:
        """A new service over the same database: what a restarted controller builds."""
        return RolloutService(self.repo, self.store, self.fleet, self.hinter, BOUNDS)

    def ingest(self, message: Message) -> None:
        self.fleet.ingest([Received(message, encode(message), self.clock.ms())],
                          collector_id="test")

    def report(self, name: str, *, current: int, target: int | None = None,
               step: str = "commit", state: str = "succeeded", detail: str | None = None) -> None:
        site, line = name.split("/")
        update = None if target is None else UpdateProgress(
            update_id="upd-1", trigger="hint", target=ModelRef(name="demo", version=target),
            step=step, state=state, detail=detail)
        msg = model_report(site, line, self.clock.now, version=current).model_copy(update={
            "current": ModelRef(name="demo", version=current), "update": update,
            "previous": None})
        self.ingest(msg)

    def metrics(self, name: str, *, version: int, at: datetime | None = None,
                passed: int = 280, failed: int = 10, uninspected: int = 0,
                p99_ms: float = 40.0, engine: bool = True) -> None:
        site, line = name.split("/")
        doc = metrics(site, line, at or self.clock.now).model_dump(mode="json", by_alias=True)
        doc.update(window_s=10.0, verdicts={"passed": passed, "failed": failed,
                                            "uninspected": uninspected},
                   uninspected_by_reason={"deadline": uninspected} if uninspected else {},
                   failed_parts_by_class={"scratches": failed} if failed else {},
                   defects_by_class={"scratches": failed} if failed else {},
                   model={"name": "demo", "version": version, "label": None},
                   engine_provider="CPUExecutionProvider" if engine else None)
        doc["latency_ms"]["end_to_end"]["p99_ms"] = p99_ms
        self.ingest(MetricsMessage.model_validate_json(json.dumps(doc)))

    def assigned(self, name: str) -> tuple[int, str]:
        site, line = name.split("/")
        current = self.store.current_assignment(site, line)
        assert current is not None
        return current.version, current.stage
