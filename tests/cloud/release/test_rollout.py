"""Rollouts end to end: a real fleet store fed with protocol messages, the cloud
database (SQLite and PostgreSQL), a TUF repository checked by a line's client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from cloud.release.errors import PublishRejected
from cloud.release.repository import Repository
from protocol.assignment import deploy_target_path
from tests.cloud.registry.helpers import migrated_engine
from tests.cloud.release.rollout_helpers import LINES, World
from tests.cloud.release.tuf_helpers import Line, new_repository, serve_directory


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = migrated_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def world(engine: Engine, tmp_path: Path) -> Iterator[World]:
    repo, _ = new_repository(tmp_path)
    w = World(engine, repo, tmp_path)
    yield w
    w.fleet.close()


def _signed_versions(repo: Repository, tmp: Path) -> dict[str, int]:
    """Each line's assignment as its own TUF client sees it."""
    out = {}
    with serve_directory(repo.root_dir) as url:
        for name in LINES:
            site, line = name.split("/")
            client = Line(url, tmp / "clients" / line, repo.trusted_root())
            out[name] = json.loads(client.fetch(deploy_target_path(site, line)))["version"]
    return out


def test_canary_with_failed_activation_halts_and_goes_back(world: World, tmp_path: Path) -> None:
    rollout = world.service().start("demo", 2, ["plant1/line-1"], by="alice")
    assert rollout.stages == [["plant1/line-1"], ["plant1/line-2", "plant1/line-3"]]
    assert world.assigned("plant1/line-1") == (2, "canary")
    assert ("update", "plant1/line-1", "demo", 2) in world.hinter.sent
    world.clock.advance(20)
    world.report("plant1/line-1", current=1, target=2, step="golden", state="failed",
                 detail="golden image 3 differs")
    world.clock.advance(5)
    [after] = world.service().step()
    assert after.state == "halted"
    assert after.reason is not None and "refused at step golden" in after.reason
    assert "golden image 3 differs" in after.reason
    assert world.assigned("plant1/line-1") == (1, "rollback")
    # The other lines never got an assignment for demo@2.
    for name in LINES[1:]:
        site, line = name.split("/")
        assert {a.version for a in world.store.assignments(site, line)} == {1}
    kinds = [s.kind for s in after.steps]
    assert kinds == ["created", "assigned", "halted", "reverted"]
    assert world.hinter.sent[-1] == ("rollback", "plant1/line-1", "", 1)
    assert _signed_versions(world.repo, tmp_path) == dict.fromkeys(LINES, 1)
    # Nothing more happens on later steps; every step is also an event.
    assert world.service().step() == []
    assert {"rollout.created", "rollout.halted", "rollout.reverted"} <= {
        e.kind for e in world.store.events()}


def test_healthy_canary_is_promoted_to_every_line_across_restarts(
        world: World, tmp_path: Path) -> None:
    world.service().start("demo", 2, ["plant1/line-1"], by="alice", waves=2)
    world.clock.advance(10)
    world.report("plant1/line-1", current=2, target=2)
    for _ in range(7):  # 70 s of healthy windows on the new model
        world.clock.advance(10)
        world.metrics("plant1/line-1", version=2)
        [r] = world.service().step()  # a new service each time: a restarted controller
        if r.stage_index == 1:
            break
    assert r.state == "active" and r.stage_index == 1, r.steps
    assert world.assigned("plant1/line-2") == (2, "wave")
    assert world.assigned("plant1/line-3") == (1, "manual")
    for stage_line in ("plant1/line-2", "plant1/line-3"):
        world.clock.advance(10)
        world.report(stage_line, current=2, target=2)
        for _ in range(8):
            world.clock.advance(10)
            world.metrics(stage_line, version=2)
            [r] = world.service().step()
            if r.state != "active" or stage_line not in r.stages[r.stage_index]:
                break
    assert r.state == "completed", r.steps
    assert [s.kind for s in r.steps].count("promoted") == 2
    assert {world.assigned(name)[0] for name in LINES} == {2}
    assert _signed_versions(world.repo, tmp_path) == dict.fromkeys(LINES, 2)


def test_unhealthy_metrics_or_no_activation_halt(world: World) -> None:
    world.service().start("demo", 2, ["plant1/line-2"], by="alice")
    world.clock.advance(10)
    world.report("plant1/line-2", current=2, target=2)
    world.clock.advance(10)
    world.metrics("plant1/line-2", version=2, p99_ms=900.0)
    [r] = world.service().step()
    assert r.state == "halted" and r.reason is not None and "latency p99 900.0 ms" in r.reason
    assert world.assigned("plant1/line-2") == (1, "rollback")
    # A second rollout whose canary never reports the new model active.
    world.service().start("demo", 2, ["plant1/line-1"], by="alice")
    world.clock.advance(599)
    assert world.service().step()[0].state == "active"
    world.clock.advance(2)
    [r] = world.service().step()
    assert r.state == "halted" and r.reason is not None and "not active after 600 s" in r.reason
    assert world.assigned("plant1/line-1") == (1, "rollback")


def test_halt_by_hand_and_a_second_rollout(world: World) -> None:
    service = world.service()
    r = service.start("demo", 2, ["plant1/line-3"], by="alice")
    with pytest.raises(PublishRejected, match="active rollout"):
        service.start("demo", 2, ["plant1/line-1"], by="bob")
    halted = service.halt(r.rollout_id, "operator request", by="bob")
    assert halted.state == "halted" and halted.reason == "halted by bob: operator request"
    assert world.assigned("plant1/line-3") == (1, "rollback")
    with pytest.raises(PublishRejected, match="is halted"):
        service.halt(r.rollout_id, "again", by="bob")
    with pytest.raises(PublishRejected, match="not released"):
        service.start("demo", 3, ["plant1/line-1"], by="bob")
    with pytest.raises(PublishRejected, match="not SITE/LINE"):
        service.start("demo", 2, ["line-1"], by="bob")


def test_rollback_on_purpose_is_a_new_assignment(world: World, tmp_path: Path) -> None:
    service = world.service()
    from cloud.release.publish import assign_line

    assign_line(world.repo, world.store, "plant1", "line-1", "demo", 2, stage="manual",
                by="alice")
    before = world.store.current_assignment("plant1", "line-1")
    assert before is not None and before.version == 2
    back = service.rollback("plant1", "line-1", by="bob")
    assert (back.version, back.sequence, back.stage) == (1, before.sequence + 1, "rollback")
    again = service.rollback("plant1", "line-1", by="bob", to_version=2)
    assert (again.version, again.sequence) == (2, back.sequence + 1)
    with pytest.raises(PublishRejected, match="not released"):
        service.rollback("plant1", "line-1", by="bob", to_version=9)
    with pytest.raises(PublishRejected, match="no assignment"):
        service.rollback("plant9", "line-1", by="bob")
    assert world.hinter.sent[-1] == ("rollback", "plant1/line-1", "", 2)
    assert _signed_versions(world.repo, tmp_path)["plant1/line-1"] == 2
    assert timedelta(0) <= world.clock.now - world.store.events()[0].at


def test_a_restarted_controller_finishes_what_a_crash_left(world: World) -> None:
    r = world.service().start("demo", 2, ["plant1/line-1"], by="alice")
    # A crash right after the promotion was recorded, before any wave line was signed.
    assert world.store.move_rollout(r, state="active", stage_index=1,
                                    stage_started_at_ms=world.clock.ms(), reason=None,
                                    step="promoted", detail="test")
    assert world.assigned("plant1/line-2") == (1, "manual")
    [after] = world.service().step()
    assert after.stage_index == 1
    assert world.assigned("plant1/line-2") == (2, "all")
    assert world.assigned("plant1/line-3") == (2, "all")
    # A crash right after the halt was recorded, before any line was sent back.
    assert world.store.move_rollout(after, state="halted", stage_index=1,
                                    stage_started_at_ms=world.clock.ms(), reason="test",
                                    step="halted", detail="test")
    assert world.service().step() == []
    assert {world.assigned(name) for name in LINES} == {(1, "rollback")}
    world.service().step()  # nothing more to do: no second rollback assignment
    assert len(world.store.assignments("plant1", "line-1")) == 3
