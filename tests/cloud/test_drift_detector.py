"""The drift detector (pure): calibration, no-drift silence, drift detection with the
channels that moved, the MMD test, bad input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from cloud.drift.detector import (
    DetectorConfig,
    DetectorError,
    DriftDetector,
    Window,
    build_baseline,
    mmd_test,
)
from models.drift.signals import SIGNAL_NAMES
from tests.cloud.drift_helpers import frames

CFG = DetectorConfig(bootstrap_replicates=100, mmd_permutations=500)
N = 20


def run(det: DriftDetector, x: np.ndarray, seed: int = 0):
    rng = np.random.default_rng(seed)
    alerts = []
    for end in range(N, len(x) + 1, N):
        a = det.update(Window.of(x[end - N:end], 16, rng, end))
        if a is not None:
            alerts.append(a)
    return alerts


@pytest.fixture(scope="module")
def baseline():
    return build_baseline(frames(1000, seed=1), SIGNAL_NAMES, N, CFG, seed=0)


def test_no_drift_stream_raises_no_alert(baseline):
    det = DriftDetector(baseline, CFG, seed=3)
    assert run(det, frames(4000, seed=2)) == []
    assert det.state.last_statistic < baseline.threshold * 3


def _windows_over_threshold(det: DriftDetector, n: int, blocks: int) -> int:
    rng = np.random.default_rng(23)
    over = 0
    for block in range(blocks):
        x = frames(20_000, seed=100 + block)
        for end in range(n, len(x) + 1, n):
            assert det.update(Window.of(x[end - n:end], 0, rng, end)) is None
            over += det.state.last_statistic > det.baseline.threshold
    return over


def test_a_line_that_never_drifts_keeps_its_false_alarm_rate_however_long_it_runs():
    # A small reference from the line's first frames (as the cloud builds it for a
    # bundle without one) and long windows: the reference mean is off by its estimation
    # error, which at this window size is larger than the configured allowance. Without
    # the phase-I margin the statistic grows every window and stays over the threshold
    # (an alarm the MMD test must refuse, window after window); with it, alarms stay
    # as rare as calibrated (0.1 per 10,000 frames) over 20 times that horizon.
    n = 40
    base = build_baseline(frames(200, seed=21), SIGNAL_NAMES, n, CFG, seed=0)
    assert base.allowance is not None and base.allowance > CFG.allowance
    assert _windows_over_threshold(DriftDetector(base, CFG, seed=22), n, 10) <= 20
    bare = replace(base, allowance=CFG.allowance, channel_allowance=None)
    assert _windows_over_threshold(DriftDetector(bare, CFG, seed=22), n, 1) > 100


def test_clear_drift_raises_one_alert_naming_the_channels(baseline):
    x = np.vstack([frames(400, seed=4),
                   frames(800, seed=5, shift={"roi.luma": 1.5, "roi.sharpness": -1.5})])
    alerts = run(DriftDetector(baseline, CFG, seed=6), x)
    assert len(alerts) == 1  # latched: one alert for a lasting drift
    a = alerts[0]
    names = [n for n, _ in a.channels]
    assert set(names[:2]) == {"roi.luma", "roi.sharpness"}
    assert dict(a.channels)["roi.luma"] > 0 > dict(a.channels)["roi.sharpness"]
    assert 400 - 5 * N <= a.onset_frame <= a.detected_frame <= 400 + 10 * N
    assert a.statistic > a.threshold and a.mmd_p_value <= CFG.mmd_alpha


def test_reset_unlatches(baseline):
    det = DriftDetector(baseline, CFG, seed=7)
    x = frames(600, seed=8, shift={"bg.luma": 2.0})
    assert len(run(det, x)) == 1
    det.reset()
    assert len(run(det, x, seed=1)) == 1


def test_threshold_grows_when_the_target_rate_shrinks():
    ref = frames(800, seed=9)
    loose = build_baseline(ref, SIGNAL_NAMES, N, DetectorConfig(
        false_alarms_per_10k=0.5, bootstrap_replicates=100), seed=0)
    strict = build_baseline(ref, SIGNAL_NAMES, N, DetectorConfig(
        false_alarms_per_10k=0.05, bootstrap_replicates=100), seed=0)
    assert strict.threshold > loose.threshold


def test_mmd_p_value_counts_the_observed_statistic():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((50, 4)), rng.standard_normal((20, 4)) + 3.0
    _, p = mmd_test(x, y, 99, rng)
    assert p == pytest.approx(1 / 100)  # never 0: the observed statistic counts
    _, p_same = mmd_test(x, rng.standard_normal((20, 4)), 99, rng)
    assert p_same > 0.05


@pytest.mark.parametrize(("reference", "message"), [
    (np.zeros((30, len(SIGNAL_NAMES))), "at least"),
    (np.zeros((500, 3)), "expected"),
    (np.full((500, len(SIGNAL_NAMES)), np.nan), "non-finite"),
])
def test_bad_reference_is_refused(reference, message):
    with pytest.raises(DetectorError, match=message):
        build_baseline(reference, SIGNAL_NAMES, N, CFG)


def test_window_of_another_width_is_refused(baseline):
    det = DriftDetector(baseline, CFG)
    with pytest.raises(DetectorError, match="sums"):
        det.update(Window(20, np.zeros(3), np.zeros((0, 3))))


def _with_defects(n: int, seed: int, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Frames whose image signals move with their number of defects (as when defects
    darken and roughen the part), and those numbers."""
    rng = np.random.default_rng(seed + 100)
    d = rng.poisson(rate, n).astype(float)
    x = frames(n, seed)
    for name, per_defect in (("roi.log_std", 0.03), ("roi.sharpness", 0.04), ("emb2", -0.03)):
        x[:, SIGNAL_NAMES.index(name)] += per_defect * d
    return x, d


def test_a_defect_rate_change_alone_raises_no_image_drift_alert():
    ref, ref_d = _with_defects(1500, seed=11, rate=1.5)
    adjusted = build_baseline(ref, SIGNAL_NAMES, N, CFG, seed=0, detections=ref_d)
    naive = build_baseline(ref, SIGNAL_NAMES, N, CFG, seed=0)
    x, d = _with_defects(3000, seed=12, rate=0.2)  # far fewer defective parts

    def alerts(baseline, with_detections):
        det, rng, found = DriftDetector(baseline, CFG, seed=1), np.random.default_rng(2), []
        for end in range(N, len(x) + 1, N):
            w = Window.of(x[end - N:end], 16, rng, end,
                          detections=d[end - N:end] if with_detections else None)
            if (a := det.update(w)) is not None:
                found.append(a)
        return found

    assert alerts(adjusted, True) == []
    assert len(alerts(naive, False)) == 1  # without the output channel it would be drift
    # A real image drift at the new defect rate is still found.
    y = x.copy()
    y[1000:, SIGNAL_NAMES.index("bg.luma")] += 0.1
    x[:] = y
    found = alerts(adjusted, True)
    assert len(found) == 1 and found[0].channels[0][0] == "bg.luma"


def test_a_colour_cast_on_a_grey_camera_is_found_at_the_measurement_floor():
    """Chroma never varies in a grey reference: it is compared at `sd_floor` (not drowned
    by shrinkage), so a small cast raises an alert naming the chroma channels."""
    chroma = [SIGNAL_NAMES.index(n) for n in SIGNAL_NAMES if "chroma" in n]
    ref = frames(1000, seed=21)
    ref[:, chroma] = 0.0
    base = build_baseline(ref, SIGNAL_NAMES, N, CFG, seed=0)
    quiet = frames(2000, seed=22)
    quiet[:, chroma] = 0.0
    assert run(DriftDetector(base, CFG, seed=1), quiet) == []
    cast = quiet.copy()
    cast[1000:, SIGNAL_NAMES.index("roi.chroma_rg")] = 0.01  # 2.5 grey levels of R - G
    cast[1000:, SIGNAL_NAMES.index("bg.chroma_rg")] = 0.01
    alerts = run(DriftDetector(base, CFG, seed=1), cast)
    assert len(alerts) == 1
    assert {n for n, _ in alerts[0].channels[:2]} == {"roi.chroma_rg", "bg.chroma_rg"}
    assert 1000 <= alerts[0].detected_frame <= 1000 + 3 * N


@pytest.mark.parametrize(("multivariate", "channel_allowance"), [
    (True, None), (False, 1.0), (True, 1.0)])
def test_each_statistic_alone_or_both_calibrate_and_find_a_one_signal_shift(
        multivariate, channel_allowance):
    cfg = DetectorConfig(bootstrap_replicates=100, mmd_permutations=500,
                         multivariate=multivariate, channel_allowance=channel_allowance)
    base = build_baseline(frames(1000, seed=1), SIGNAL_NAMES, N, cfg, seed=0)
    assert np.isfinite(base.threshold) == multivariate
    assert np.isfinite(base.channel_threshold) == (channel_allowance is not None)
    assert run(DriftDetector(base, cfg, seed=3), frames(4000, seed=2)) == []
    x = np.vstack([frames(400, seed=4), frames(600, seed=5, shift={"roi.p95": -2.0})])
    alerts = run(DriftDetector(base, cfg, seed=6), x)
    assert len(alerts) == 1 and alerts[0].channels[0][0] == "roi.p95"
    assert alerts[0].statistic > alerts[0].threshold


def test_the_channel_cusums_find_a_one_signal_shift_sooner_than_the_mcusum():
    only_mcusum = DetectorConfig(bootstrap_replicates=100, mmd_permutations=500,
                                 channel_allowance=None)
    both = DetectorConfig(bootstrap_replicates=100, mmd_permutations=500)
    x = np.vstack([frames(400, seed=4), frames(1600, seed=5, shift={"edge.sharpness": 0.8})])

    def first(cfg: DetectorConfig) -> int:
        base = build_baseline(frames(1000, seed=1), SIGNAL_NAMES, N, cfg, seed=0)
        alerts = run(DriftDetector(base, cfg, seed=6), x)
        return alerts[0].detected_frame if alerts else len(x) + 1

    assert first(both) < first(only_mcusum)


def test_an_unreachable_mmd_level_is_refused():
    with pytest.raises(DetectorError, match="smallest p-value"):
        DetectorConfig(mmd_alpha=0.001, mmd_permutations=200)


def test_baseline_and_state_survive_their_json_forms(baseline):
    from cloud.drift import persist

    det = DriftDetector(baseline, CFG, seed=3)
    run(det, frames(200, seed=2, shift={"roi.luma": 1.0}))
    back = persist.baseline_from_json(persist.baseline_to_json(baseline))
    assert back.channel_threshold == baseline.channel_threshold
    assert np.allclose(back.whitener, baseline.whitener)
    state = persist.state_from_json(persist.state_to_json(det.state))
    assert det.state.channel_accumulator is not None
    assert np.allclose(state.channel_accumulator, det.state.channel_accumulator)
    assert state.last_channel_statistic == det.state.last_channel_statistic
    mcusum_only = build_baseline(frames(1000, seed=1), SIGNAL_NAMES, N, DetectorConfig(
        bootstrap_replicates=50, mmd_permutations=500, channel_allowance=None), seed=0)
    text = persist.baseline_to_json(mcusum_only)
    assert "Infinity" not in text  # JSON has no infinity
    assert persist.baseline_from_json(text).channel_threshold == float("inf")
