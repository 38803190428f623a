"""The update agent's pure parts as tables: the state transitions (crash safety at start),
shadow and health decisions, matching of judgements; and the verified bundle cache
(a bundle copied in by hand or changed after verification is refused)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from appliance.records import DefectRecord
from appliance.updater.compare import (
    HealthFigures,
    ShadowResult,
    figures_of,
    health_failures,
    judgements_agree,
    shadow_refusal,
)
from appliance.updater.control import AgentLock
from appliance.updater.errors import UpdateRejected, UpdateStateError
from appliance.updater.state import (
    BundleRef,
    StateFile,
    Trial,
    UpdateState,
    activated,
    begin_staging,
    boot_choice,
    commit,
    refuse,
    roll_back,
)
from appliance.updater.verified import BundleCache, tree_sha256
from models.bundle import pack_bundle
from tests.appliance.pipeline_helpers import tiny_bundle
from tests.appliance.update_rig import escape_tar


def ref(v: int) -> BundleRef:
    return BundleRef(version_id=f"tiny:{v}", path=f"/b/{v}", tree_sha256=f"{v:064x}",
                     sequence=v)


NOW = datetime(2026, 1, 1, tzinfo=UTC)


def trial(v: int, starts: int, on: bool) -> Trial:
    return Trial(bundle=ref(v), sequence=v, activated=on, failed_starts=starts, since=NOW)


@pytest.mark.parametrize(("state", "outcome", "active", "starts"), [
    (UpdateState(active=ref(1)), "none", "tiny:1", None),
    (UpdateState(active=ref(2), previous=ref(1), trial=trial(2, 0, True)), "trial", "tiny:2", 1),
    (UpdateState(active=ref(2), previous=ref(1), trial=trial(2, 2, True)), "trial", "tiny:2", 3),
    (UpdateState(active=ref(2), previous=ref(1), trial=trial(2, 3, True)), "abandoned",
     "tiny:1", None),
    (UpdateState(active=ref(1), trial=trial(2, 1, False)), "trial", "tiny:1", 2),
    (UpdateState(active=ref(1), trial=trial(2, 3, False)), "abandoned_staging", "tiny:1", None),
])
def test_boot_choice(state: UpdateState, outcome: str, active: str, starts: int | None) -> None:
    new, what = boot_choice(state, max_failed_starts=3)
    assert what == outcome
    assert new.active is not None and new.active.version_id == active
    assert (new.trial.failed_starts if new.trial else None) == starts
    if outcome.startswith("abandoned"):
        assert "tiny:2" in new.abandoned and new.last_sequence == 2


def test_state_transitions_of_one_update() -> None:
    s = UpdateState(active=ref(1))
    s = begin_staging(s, ref(2), 7)
    assert s.active == ref(1) and s.trial is not None and not s.trial.activated
    assert begin_staging(s, ref(2), 7) == s  # a retry keeps its counter
    s = activated(s)
    assert s.active == ref(2) and s.previous == ref(1) and s.trial and s.trial.activated
    done = commit(s)
    assert done.trial is None and done.last_sequence == 7
    back = roll_back(s)
    assert back.active == ref(1) and back.previous == ref(2) and "tiny:2" in back.abandoned
    refused = refuse(begin_staging(UpdateState(active=ref(1)), ref(3), 9))
    assert refused.active == ref(1) and refused.last_sequence == 9
    with pytest.raises(UpdateStateError, match="no previous bundle"):
        roll_back(UpdateState(active=ref(1)))


def test_state_file_is_atomic_and_validated(tmp_path: Path) -> None:
    f = StateFile(tmp_path)
    assert f.load() == UpdateState()
    s = UpdateState(active=ref(1), last_sequence=3)
    f.save(s)
    assert f.load() == s
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left
    f.path.write_text('{"active": 1}')
    with pytest.raises(UpdateStateError, match="invalid update state"):
        f.load()


def d(cls: str, x: float) -> DefectRecord:
    return DefectRecord(class_id=0, class_name=cls, score=0.9, box_xyxy=(x, 0, x + 10, 10))


@pytest.mark.parametrize(("a", "b", "agree"), [
    (("pass", []), ("pass", []), True),
    (("fail", [d("dent", 0)]), ("fail", [d("dent", 1)]), True),       # IoU 0.82
    (("fail", [d("dent", 0)]), ("fail", [d("dent", 6)]), False),      # IoU 0.25
    (("fail", [d("dent", 0)]), ("fail", [d("scratch", 0)]), False),   # another class
    (("fail", [d("dent", 0)]), ("pass", []), False),
    (("fail", [d("dent", 0), d("dent", 30)]), ("fail", [d("dent", 30), d("dent", 0)]), True),
    (("fail", [d("dent", 0), d("dent", 1)]), ("fail", [d("dent", 0)]), False),
])
def test_judgements_agree(a: tuple[str, list[DefectRecord]], b: tuple[str, list[DefectRecord]],
                          agree: bool) -> None:
    assert judgements_agree(a[0], a[1], b[0], b[1], min_iou=0.5) is agree


@pytest.mark.parametrize(("result", "reason"), [
    (ShadowResult(50, 50, 1.0, 1.0, 0), None),
    (ShadowResult(50, 40, 1.0, 1.0, 0), "agreement 0.800"),
    (ShadowResult(20, 20, 1.0, 1.0, 0), "only 20 of 50"),
    (ShadowResult(50, 50, 9.0, 3.0, 0), "over 2.0x"),
    (ShadowResult(50, 50, 0.9, 0.3, 0), None),       # 3x, but within the noise floor
    (ShadowResult(50, 50, 30.0, 29.0, 0), "budget"),
    (ShadowResult(49, 49, 1.0, 1.0, 1), "failed on 1"),
])
def test_shadow_refusal(result: ShadowResult, reason: str | None) -> None:
    why = shadow_refusal(result, wanted_frames=50, min_agreement=0.95, max_latency_ratio=2.0,
                         latency_budget_ms=25.0, latency_floor_ms=1.0)
    assert (why is None) if reason is None else (why is not None and reason in why)


def fig(n: int, un: int = 0, eng: int = 0, fails: int = 0, p99: float = 10.0) -> HealthFigures:
    return HealthFigures(verdicts=n, uninspected=un, engine_failures=eng, fails=fails,
                         latency_ms_p99=p99)


@pytest.mark.parametrize(("before", "after", "reason"), [
    (fig(100, fails=10), fig(100, fails=12), None),
    (fig(100, fails=10), fig(100, fails=50), "defect rate"),
    (fig(100), fig(100, un=5, eng=5), "engine failure"),
    (fig(100), fig(100, un=5), "uninspected rate"),
    (fig(100, p99=10.0), fig(100, p99=40.0), "latency p99"),
    (None, fig(100, fails=90), None),   # no baseline: absolute checks only
])
def test_health_failures(before: HealthFigures | None, after: HealthFigures,
                         reason: str | None) -> None:
    found = health_failures(before, after, max_uninspected_increase=0.02,
                            max_p99_latency_ratio=3.0, max_defect_rate_shift=0.25)
    assert (not found) if reason is None else any(reason in r for r in found)


def test_figures_of() -> None:
    f = figures_of([("pass", None, 5.0), ("fail", None, 7.0),
                    ("uninspected", "engine_failure", None)])
    assert (f.verdicts, f.uninspected, f.engine_failures, f.fails) == (3, 1, 1, 1)
    assert f.fail_rate == 0.5


def test_cache_refuses_hand_copied_changed_and_escaping_bundles(tmp_path: Path) -> None:
    b = tiny_bundle(tmp_path / "src", version=2)
    tar = pack_bundle(b.root, tmp_path / "t.tar")
    cache = BundleCache(tmp_path / "cache", max_unpacked_bytes=1 << 30)
    r = cache.install(tar, name="tiny", version=2, tar_sha256="a" * 64, sequence=1)
    assert cache.open(r).manifest.version == 2
    assert cache.find("2") == r and cache.find("tiny:2") == r
    assert cache.install(tar, name="tiny", version=2, tar_sha256="a" * 64, sequence=1) == r
    # by hand: no record, never found
    shutil.copytree(b.root, cache.bundles_dir / "tiny-3-byhand")
    assert cache.find("3") is None
    # changed after verification: refused
    (Path(r.path) / "golden" / "golden.json").write_text("{}")
    with pytest.raises(UpdateRejected, match="differs from what was verified"):
        cache.open(r)
    with pytest.raises(UpdateRejected, match="holds tiny:2"):
        cache.install(tar, name="tiny", version=4, tar_sha256="b" * 64, sequence=2)
    evil = escape_tar(b.root, tmp_path / "evil.tar")
    with pytest.raises(UpdateRejected, match=r"\.\."):
        cache.install(evil, name="tiny", version=2, tar_sha256="c" * 64, sequence=3)
    assert not (cache.bundles_dir.parent / "escape.txt").exists()
    assert tree_sha256(b.root) == tree_sha256(b.root)


def test_agent_lock_is_exclusive(tmp_path: Path) -> None:
    a, b = AgentLock(tmp_path), AgentLock(tmp_path)
    assert a.acquire() and not b.acquire()
    a.release()
    assert b.acquire()
    b.release()
