"""Retraining requests on SQLite and PostgreSQL: de-duplicated while open, rate-limited
per line, claimed once; the schedule; a worker that cannot plan fails the request."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from cloud.fleet.views import LineView, ModelRefView
from cloud.registry import ModelRef, ModelRegistry
from cloud.retrain.config import LineRetrain, RetrainConfig, ScheduleConfig
from cloud.retrain.errors import RetrainError
from cloud.retrain.requests import RetrainQueue, RetrainRequest
from cloud.retrain.worker import RetrainWorker, due_lines, plan_request
from tests.cloud.registry.helpers import migrated_engine

HOUR_MS = 3_600_000


class Clock:
    def __init__(self) -> None:
        self.ms = 1_800_000_000_000

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = migrated_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(engine: Engine, clock: Clock) -> RetrainQueue:
    return RetrainQueue(engine, min_interval_h=24, clock_ms=clock)


def test_request_is_deduplicated_while_open_and_rate_limited(queue: RetrainQueue,
                                                             clock: Clock) -> None:
    first = queue.request_retrain("plant1/line-1", "drift: psi 0.4 on brightness")
    assert first is not None and first.state == "queued" and first.source == "drift"
    assert (first.site, first.line, first.line_key) == ("plant1", "line-1", "plant1/line-1")
    assert queue.request_retrain("plant1/line-1", "drift again") is None  # open
    other = queue.request_retrain("plant1/line-2", "drift")
    assert other is not None  # per line
    claimed = queue.claim()
    assert claimed is not None and claimed.id == first.id and claimed.state == "running"
    assert queue.request_retrain("plant1/line-1", "drift while running") is None
    done = queue.finish(first.id, ok=True, outcome="demo@2 approved",
                        candidate=ModelRef("demo", 2))
    assert done.state == "done" and done.candidate == ModelRef("demo", 2)
    clock.ms += 23 * HOUR_MS
    assert queue.request_retrain("plant1/line-1", "drift, too soon") is None  # rate limit
    clock.ms += 1 * HOUR_MS
    again = queue.request_retrain("plant1/line-1", "drift a day later")
    assert again is not None and again.id != first.id
    assert [r.id for r in queue.requests("plant1/line-1")] == [again.id, first.id]


def test_claim_takes_each_request_once(queue: RetrainQueue) -> None:
    ids = [queue.request_retrain(f"plant1/line-{i}", "drift") for i in range(3)]
    claimed = [queue.claim() for _ in range(4)]
    assert [c.id if c else None for c in claimed] == [r.id if r else -1 for r in ids] + [None]
    assert ids[0] is not None
    queue.finish(ids[0].id, ok=True, outcome="x")
    with pytest.raises(RetrainError, match="is not running"):
        queue.finish(ids[0].id, ok=True, outcome="again")


@pytest.mark.parametrize("line", ["line-1", "Plant1/line-1", "plant1/", "a/b/c", ""])
def test_bad_line_ids_are_refused(queue: RetrainQueue, line: str) -> None:
    with pytest.raises(RetrainError, match="is not site/line"):
        queue.request_retrain(line, "drift")


def test_due_lines() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    last = {"p/a": now - timedelta(hours=30), "p/b": now - timedelta(hours=2)}
    assert due_lines(["p/a", "p/b", "p/c"], last, now, timedelta(hours=24)) == ["p/a", "p/c"]


def _line(site: str, line: str, model: tuple[str, int] | None) -> LineView:
    t = datetime(2026, 12, 1, tzinfo=UTC)
    return LineView(site=site, line=line, online=True, state="running", reason=None,
                    status_at=t, first_seen_at=t, last_seen_at=t, app_version=None,
                    started_at=None, sources={}, alarms=[],
                    model=ModelRefView(name=model[0], version=model[1]) if model else None,
                    model_at=t)


def test_schedule_and_a_request_that_cannot_be_planned_fails(
        engine: Engine, queue: RetrainQueue, tmp_path: Path, clock: Clock) -> None:
    config = RetrainConfig(lines={"plant1/line-1": LineRetrain(dataset=str(tmp_path)),
                                  "plant1/line-2": LineRetrain(dataset="parts")},
                           schedule=ScheduleConfig(every_h=24), work_dir=tmp_path / "runs")
    registry = ModelRegistry(engine, tmp_path / "registry")
    lines = [_line("plant1", "line-1", None), _line("plant1", "line-2", ("demo", 1))]
    worker = RetrainWorker(queue, registry, config, lambda: lines)
    now = datetime.fromtimestamp(clock.ms / 1000, UTC)
    assert [r.line_key for r in worker.schedule(now)] == ["plant1/line-1", "plant1/line-2"]
    assert worker.schedule(now) == []
    first = worker.run_once()
    assert first is not None and first.state == "failed"
    assert first.outcome is not None and "knows no model" in first.outcome
    second = worker.run_once()
    assert second is not None and second.state == "failed"
    assert second.outcome is not None and "needs the dataset index" in second.outcome
    assert worker.run_once() is None


def test_plan_uses_the_line_model_and_the_configured_data(tmp_path: Path) -> None:
    class Index:
        def materialize(self, ref: str, out_dir: Path) -> Path:
            raise AssertionError

        def resolve(self, ref: str) -> tuple[str, str]:
            return f"{ref}@7", "ab" * 32

        def created_at(self, ref: str) -> datetime:
            raise AssertionError

        def new_holdout(self, ref: str, out_dir: Path) -> tuple[Path, int] | None:
            raise AssertionError

    config = RetrainConfig(lines={"p/a": LineRetrain(dataset="parts"),
                                  "p/b": LineRetrain(dataset=str(tmp_path))})
    lines = [_line("p", "a", ("demo", 3)), _line("p", "b", ("demo", 4))]

    def req(line: str) -> RetrainRequest:
        site, name = line.split("/")
        return RetrainRequest(id=1, site=site, line=name, reason="r", source="drift",
                              state="running", requested_at=datetime.now(UTC), started_at=None,
                              finished_at=None, parent=None, dataset=None, candidate=None,
                              outcome=None)

    plan = plan_request(req("p/a"), config, lines, Index())
    assert (plan.parent, plan.data) == (ModelRef("demo", 3), "parts@7")
    plan = plan_request(req("p/b"), config, lines, None)
    assert (plan.parent, plan.data) == (ModelRef("demo", 4), str(tmp_path))
    with pytest.raises(RetrainError, match="no dataset configured"):
        plan_request(req("p/c"), config, [*lines, _line("p", "c", ("demo", 1))], None)


class _Versions:
    """A dataset index whose newest version was made at `made`."""

    def __init__(self, made: datetime) -> None:
        self.made = made

    def materialize(self, ref: str, out_dir: Path) -> Path:
        raise AssertionError("not planned this far")

    def resolve(self, ref: str) -> tuple[str, str]:
        return f"{ref}@1", "cd" * 32

    def created_at(self, ref: str) -> datetime:
        return self.made

    def new_holdout(self, ref: str, out_dir: Path) -> tuple[Path, int] | None:
        raise AssertionError("not planned this far")


def test_a_drift_request_waits_for_newer_data_then_runs(
        engine: Engine, queue: RetrainQueue, tmp_path: Path, clock: Clock) -> None:
    config = RetrainConfig(lines={"plant1/line-1": LineRetrain(dataset="parts"),
                                  "plant1/line-2": LineRetrain(dataset="parts")},
                           drift_data_wait_h=10, work_dir=tmp_path / "runs")
    now = datetime.fromtimestamp(clock.ms / 1000, UTC)
    index = _Versions(made=now - timedelta(hours=1))  # the data the model learned from
    worker = RetrainWorker(queue, ModelRegistry(engine, tmp_path / "registry"), config,
                           lambda: [], datasets=index)
    drift = queue.request_retrain("plant1/line-1", "drift alert 7")
    manual = queue.request_retrain("plant1/line-2", "by hand", source="manual")
    assert drift is not None and manual is not None
    assert worker.waiting_for_data(drift) is not None
    assert worker.waiting_for_data(manual) is None
    # the manual request runs past the waiting drift request (and fails to plan here:
    # the fleet store knows no model of line-2)
    ran = worker.run_once()
    assert ran is not None and ran.id == manual.id
    assert worker.run_once() is None
    assert queue.get(drift.id).state == "queued"
    # the operators' labels are accepted into a new version: the drift request runs
    index.made = now + timedelta(minutes=5)
    ran = worker.run_once()
    assert ran is not None and ran.id == drift.id and ran.state == "failed"
    assert ran.outcome is not None and "knows no model" in ran.outcome


def test_a_drift_request_without_new_data_expires(
        engine: Engine, queue: RetrainQueue, tmp_path: Path, clock: Clock) -> None:
    config = RetrainConfig(lines={"plant1/line-1": LineRetrain(dataset="parts")},
                           drift_data_wait_h=10, work_dir=tmp_path / "runs")
    asked = datetime.fromtimestamp(clock.ms / 1000, UTC)
    worker = RetrainWorker(queue, ModelRegistry(engine, tmp_path / "registry"), config,
                           lambda: [], datasets=_Versions(made=asked - timedelta(days=1)))
    drift = queue.request_retrain("plant1/line-1", "drift alert 8")
    assert drift is not None
    assert worker.expire(asked + timedelta(hours=9)) == []
    dropped = worker.expire(asked + timedelta(hours=10))
    assert [r.id for r in dropped] == [drift.id]
    assert dropped[0].state == "failed" and dropped[0].started_at is None
    assert dropped[0].outcome is not None and "no new data after 10 h" in dropped[0].outcome
    assert worker.expire(asked + timedelta(hours=11)) == []
    # the line may ask again (nothing is open; min_interval_h counts from the last ask)
    clock.ms += 25 * HOUR_MS
    assert queue.request_retrain("plant1/line-1", "drift alert 9") is not None
