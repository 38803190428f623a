"""Rollout decisions as tables (pure functions, no IO)."""

from __future__ import annotations

import pytest

from cloud.release.config import HealthBounds
from cloud.rollout.decide import (
    LineObservation,
    LineVerdict,
    MetricsWindow,
    UpdateStatus,
    decide_stage,
    judge_line,
    split_waves,
)

B = HealthBounds(health_window_s=60, activation_timeout_s=300, min_parts=100,
                 max_uninspected_rate=0.02, max_latency_p99_ms=200.0,
                 max_engine_error_windows=0, max_defect_rate_shift=0.1)
NEW = ("demo", 2)
OLD = ("demo", 1)
START = 1_000_000


def w(at_s: float, *, model: tuple[str, int] | None = NEW, passed: int = 90, failed: int = 10,
      uninspected: int = 0, p99: float | None = 50.0, engine: bool = True) -> MetricsWindow:
    return MetricsWindow(sent_at_ms=START + int(at_s * 1000), window_s=10.0, passed=passed,
                         failed=failed, uninspected=uninspected, latency_p99_ms=p99,
                         engine_running=engine, model=model)


HEALTHY = tuple(w(t) for t in range(10, 80, 10))
BASELINE = (w(-20, model=OLD), w(-10, model=OLD))


@pytest.mark.parametrize(("obs", "now_s", "health", "why"), [
    # activation
    (LineObservation(OLD, None), 10, "pending", "waiting for activation"),
    (LineObservation(OLD, None), 300, "unhealthy", "not active after 300 s"),
    (LineObservation(OLD, UpdateStatus(NEW, "golden", "failed", "image 3 differs")), 5,
     "unhealthy", "refused at step golden: image 3 differs"),
    (LineObservation(OLD, UpdateStatus(NEW, "rollback", "succeeded")), 5, "unhealthy",
     "rolled back"),
    (LineObservation(OLD, UpdateStatus(("demo", 3), "golden", "failed")), 5, "pending",
     "waiting for activation"),
    (LineObservation(OLD, UpdateStatus(NEW, "shadow", "running")), 5, "pending",
     "waiting for activation"),
    (LineObservation(OLD, None, (w(10),)), 30, "unhealthy", "now runs demo@1"),
    (LineObservation(None, None, (w(10),)), 30, "unhealthy", "now runs nothing"),
    # active on the new model
    (LineObservation(NEW, None), 10, "pending", "waiting for metrics"),
    (LineObservation(NEW, None, (w(10, model=OLD),)), 20, "pending", "waiting for metrics"),
    (LineObservation(NEW, None, (w(-5),)), 20, "pending", "waiting for metrics"),
    (LineObservation(NEW, None, HEALTHY[:2]), 20, "pending", "in the health window"),
    (LineObservation(NEW, None, HEALTHY, BASELINE), 80, "healthy", "within bounds"),
    (LineObservation(NEW, None, HEALTHY), 80, "healthy", "within bounds"),
    (LineObservation(NEW, None, (w(10, passed=5, failed=0),) * 2), 90, "unhealthy",
     "only 10 parts"),
    (LineObservation(NEW, None, (*HEALTHY[:3], w(40, p99=250.0))), 40, "unhealthy",
     "latency p99 250.0 ms > 200 ms"),
    (LineObservation(NEW, None, (w(10, engine=False),)), 10, "unhealthy",
     "without a running engine"),
    (LineObservation(NEW, None, (w(10, passed=80, uninspected=10),) * 2), 20, "unhealthy",
     "uninspected rate 0.100"),
    (LineObservation(NEW, None, (w(10, passed=99, uninspected=1),) * 7), 80, "healthy",
     "within bounds"),
    (LineObservation(NEW, None, (w(10, passed=60, failed=40),) * 2, BASELINE), 20,
     "unhealthy", "defect rate 0.400 vs 0.100"),
    (LineObservation(NEW, None, (w(10, passed=60, failed=40),) * 7,
                     (w(-10, model=OLD, passed=45, failed=5),)), 80,
     "healthy", "within bounds"),  # a baseline under min_parts is not compared
])
def test_judge_line(obs: LineObservation, now_s: float, health: str, why: str) -> None:
    verdict = judge_line(obs, NEW, START, START + int(now_s * 1000), B, 60)
    assert verdict.health == health, verdict
    assert why in verdict.reason


H, P, U = (LineVerdict("healthy", "ok"), LineVerdict("pending", "wait"),
           LineVerdict("unhealthy", "bad"))


@pytest.mark.parametrize(("verdicts", "last", "action"), [
    ({"a": H, "b": H}, False, "promote"),
    ({"a": H, "b": H}, True, "complete"),
    ({"a": H, "b": P}, False, "wait"),
    ({"a": P, "b": U}, False, "halt"),
    ({"a": H, "b": U}, True, "halt"),
])
def test_decide_stage(verdicts: dict[str, LineVerdict], last: bool, action: str) -> None:
    assert decide_stage(verdicts, last_stage=last).action == action


@pytest.mark.parametrize(("n", "waves", "sizes"), [
    (5, 1, [5]), (5, 2, [3, 2]), (5, 3, [2, 2, 1]), (2, 5, [1, 1]), (0, 3, []), (6, 3, [2, 2, 2]),
])
def test_split_waves(n: int, waves: int, sizes: list[int]) -> None:
    lines = [f"s/l{i}" for i in range(n)]
    out = split_waves(lines, waves)
    assert [len(x) for x in out] == sizes
    assert [x for wave in out for x in wave] == sorted(lines)


def test_the_controller_loop_survives_a_failing_step() -> None:
    import threading

    from cloud.release.errors import ReleaseError
    from cloud.rollout.service import run_controller

    stop = threading.Event()
    calls: list[int] = []
    errors: list[Exception] = []

    class Flaky:
        def step(self) -> object:
            calls.append(1)
            if len(calls) == 1:
                raise ReleaseError("database locked")
            stop.set()
            return []

    run_controller(Flaky(), stop, 0.01, on_error=errors.append)
    assert len(calls) == 2 and [str(e) for e in errors] == ["database locked"]
