"""The active-learning sampler's budget (pure): quotas per reason, pacing within the
hour, the reason order, near-threshold and rare-class candidates, and the config's
refusals."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from appliance.uploads.config import UploadsConfig
from appliance.uploads.sampler import (
    RareClasses,
    Sampler,
    allowed_by,
    hourly_quotas,
    near_threshold,
    random_pick,
)

T0 = 1_700_000_000.0 - (1_700_000_000.0 % 3600)  # the start of an hour
THRESHOLDS = {"scratch": 0.5, "pit": 0.6}


def config(**overrides: object) -> UploadsConfig:
    return UploadsConfig.model_validate({"url": "https://cloud.example/api",
                                         "token_file": "/etc/lineguard/upload.token",
                                         **overrides})


@pytest.mark.parametrize(("budget", "shares", "expected"), [
    (60, {}, {"near_threshold": 24, "rare_class": 12, "random": 24}),
    (10, {"random": 0.5, "near_threshold": 0.3, "rare_class": 0.2},
     {"near_threshold": 3, "rare_class": 2, "random": 5}),
    (7, {"random": 1.0, "near_threshold": 0.0, "rare_class": 0.0},
     {"near_threshold": 0, "rare_class": 0, "random": 7}),
    (0, {}, {"near_threshold": 0, "rare_class": 0, "random": 0}),
    (3, {"random": 0.1, "near_threshold": 0.1, "rare_class": 0.1},
     {"near_threshold": 0, "rare_class": 0, "random": 0}),
])
def test_hourly_quotas(budget: int, shares: dict[str, float],
                       expected: dict[str, int]) -> None:
    cfg = config(budget_per_hour=budget, shares=shares)
    assert hourly_quotas(budget, cfg) == expected


@pytest.mark.parametrize(("quota", "t_s", "allowed"), [
    (0, 0.0, 0), (0, 3599.0, 0),
    (24, 0.0, 2), (24, 900.0, 8), (24, 1800.0, 14), (24, 3599.0, 25 - 1), (24, 3600.0, 24),
    (5, 0.0, 1), (5, 1800.0, 3), (5, 3599.0, 5),
    (100, -5.0, 10), (100, 7200.0, 100),
])
def test_pacing_within_the_hour(quota: int, t_s: float, allowed: int) -> None:
    assert allowed_by(quota, t_s) == allowed


def test_every_frame_random_takes_exactly_the_quota_per_hour_paced() -> None:
    sampler = Sampler(config(budget_per_hour=20, random_fraction=1.0,
                             shares={"random": 0.5, "near_threshold": 0.5, "rare_class": 0}))
    taken_at: list[float] = []
    for k in range(2 * 3600):  # one pass frame a second for two hours
        now = T0 + k
        if sampler.decide(f"s1:{k}", [], THRESHOLDS, now) is not None:
            taken_at.append(now)
    first = [t for t in taken_at if t < T0 + 3600]
    second = [t for t in taken_at if t >= T0 + 3600]
    assert len(first) == len(second) == 10
    # paced: burst 1 at once, the rest spread over the hour
    assert len([t for t in first if t < T0 + 600]) <= 1 + 10 * 600 // 3600
    assert max(first) > T0 + 3000


def test_reason_order_and_fallback_when_a_reason_is_used_up() -> None:
    sampler = Sampler(config(budget_per_hour=10, random_fraction=1.0,
                             shares={"random": 0.1, "near_threshold": 0.1, "rare_class": 0.1}))
    assert sampler.quotas == {"near_threshold": 1, "rare_class": 1, "random": 1}
    now = T0 + 3599  # the whole quota is allowed
    close = [("scratch", 0.55)]  # near its 0.5 threshold
    assert sampler.decide("s1:1", close, THRESHOLDS, now) == "near_threshold"
    # near its threshold too, but that quota is used; pit was never seen: rare
    assert sampler.decide("s1:2", [("pit", 0.65)], THRESHOLDS, now) == "rare_class"
    assert sampler.decide("s1:3", close, THRESHOLDS, now) == "random"
    assert sampler.decide("s1:4", close, THRESHOLDS, now) is None
    assert sampler.taken() == {"near_threshold": 1, "rare_class": 1, "random": 1}
    assert sampler.decide("s1:5", close, THRESHOLDS, now + 1) == "near_threshold"  # new hour


def test_a_zero_budget_never_samples() -> None:
    sampler = Sampler(config(budget_per_hour=0, random_fraction=1.0))
    assert all(sampler.decide(f"s1:{k}", [("pit", 0.61)], THRESHOLDS, T0 + k) is None
               for k in range(100))


@pytest.mark.parametrize(("detections", "margin", "near"), [
    ([("scratch", 0.55)], 0.1, True),
    ([("scratch", 0.60)], 0.1, True),
    ([("scratch", 0.61)], 0.1, False),
    ([("pit", 0.95), ("scratch", 0.52)], 0.05, True),
    ([("pit", 0.95)], 0.3, False),
    ([("dent", 0.3)], 0.5, False),  # no threshold known for the class
    ([], 0.5, False),
])
def test_near_threshold(detections: list[tuple[str, float]], margin: float, near: bool) -> None:
    assert near_threshold(detections, THRESHOLDS, margin) is near


def test_rare_classes_over_a_window() -> None:
    rare = RareClasses(window=10, rare_share=0.2)
    assert rare.is_rare("pit")  # nothing seen yet
    rare.observe(["scratch"] * 9 + ["pit"])
    assert rare.is_rare("pit") and not rare.is_rare("scratch")  # 1/10 < 0.2
    rare.observe(["pit"] * 2)  # window: 7 scratch, 3 pit
    assert not rare.is_rare("pit")
    rare.observe(["scratch"] * 10)
    assert rare.is_rare("pit")  # fell out of the window


def test_random_pick_is_a_stable_fraction() -> None:
    picked = [random_pick(f"s1:{k}", 0.1) for k in range(20_000)]
    assert 0.09 < sum(picked) / len(picked) < 0.11
    assert picked == [random_pick(f"s1:{k}", 0.1) for k in range(20_000)]
    assert not random_pick("s1:1", 0.0) and random_pick("s1:1", 1.0)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"shares": {"random": 0.6, "near_threshold": 0.6}}, "shares must sum to at most 1"),
    ({"url": "cloud.example"}, "url"),
    ({"budget_per_hour": -1}, "budget_per_hour"),
    ({"margin": 0}, "margin"),
    ({"queue_max_bytes": 10}, "queue_max_bytes"),
    ({"tokenfile": "x"}, "tokenfile"),
    ({"backoff": {"initial_s": 5, "max_s": 1}}, "max_s"),
])
def test_bad_config_is_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        config(**overrides)
