"""The sequential drift detector: a multivariate CUSUM and per-signal CUSUMs on
whitened window means, with thresholds calibrated jointly by block bootstrap, confirmed
by an MMD permutation test.

Pure numpy/scipy, no IO: the cloud's monitor feeds it windows and stores its state;
the benchmark feeds it the same windows.

Invariants:
- a `Baseline` is built from reference frames (signal vectors in capture order) alone,
  deterministically for a given seed: mean, a covariance shrunk toward its diagonal
  with a floor `sd_floor` in every direction, its inverse square root (the whitener),
  and the thresholds `h` (MCUSUM) and `h_channel` (per-signal CUSUMs) calibrated
  jointly so that no-drift streams bootstrapped from the reference raise an alarm of
  either within `10_000` frames with probability `false_alarms_per_10k` (a reference
  mean re-estimated from a bootstrap sample in every replicate, so the estimation
  error of the reference is in the thresholds);
- the CUSUMs' allowances are the configured ones plus the `phase1_quantile` of the
  reference mean's own estimation error (whitened, at the window size, from the same
  bootstrap; its norm for the MCUSUM, each coordinate for the per-signal CUSUMs): a
  reference mean that is off by its typical error would otherwise make a statistic
  grow by a little every window on a line that never drifts, and a line that runs for
  days would then alarm for certain; with the margin the statistics stay bounded and
  the 10,000-frame rate holds for every 10,000 frames, not only the first;
- the CUSUMs (Crosier's MCUSUM; a two-sided CUSUM per whitened signal) see one
  whitened window mean at a time, z = sqrt(n) W (mean - mu); on an alarm of either the
  onset is the most likely change point over the last `history_windows` windows
  (`change_point`), and the alarm is only an alert once the MMD test (in the same
  whitened coordinates) between reference frames and the frames sampled since that
  onset gives p <= `mmd_alpha` (p counts the observed statistic:
  (1 + #{perm >= obs}) / (1 + P));
- after an alert the detector is latched: it raises nothing more until `reset()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from cloud.errors import CloudError

F64 = npt.NDArray[np.float64]

FRAMES_PER_RATE: Final = 10_000
_SAMPLED_WINDOWS: Final = 16


class DetectorError(CloudError, ValueError):
    """A reference or window the detector cannot use (named in the message)."""


@dataclass(frozen=True)
class DetectorConfig:
    """Tuning of the detector (the cloud's `drift:` config section holds the same keys)."""

    false_alarms_per_10k: float = 0.1
    allowance: float = 2.5
    phase1_quantile: float = 0.95
    bootstrap_replicates: int = 200
    block_frames: int = 10
    shrinkage: float = 0.02
    mmd_alpha: float = 0.002
    mmd_permutations: int = 1000
    mmd_reference_frames: int = 200
    confirm_windows: int = 4
    channel_z: float = 4.0
    max_channels: int = 8
    history_windows: int = 64
    # Per-channel two-sided CUSUMs on the whitened coordinates, beside the MCUSUM: their
    # allowance (whitened units per window); None: the MCUSUM alone.
    channel_allowance: float | None = 1.0
    # Whether the MCUSUM runs at all (False: the per-channel CUSUMs alone).
    multivariate: bool = True
    # Floor on every direction's standard deviation (signal units): a signal that never
    # varies in the reference (chroma of a grey camera) is compared at the resolution it
    # is measured with, not at zero.
    sd_floor: float = 0.002
    # Space of the MMD confirmation: "whitened" (the detector's own coordinates, so the
    # test sees what the CUSUMs saw: a colour cast on a grey camera, a shift against
    # the correlation of two signals) or "standardised" (per-signal SD, floored).
    mmd_space: Literal["whitened", "standardised"] = "whitened"

    def __post_init__(self) -> None:
        if self.mmd_alpha * (1 + self.mmd_permutations) < 1.0:
            raise DetectorError(f"mmd_alpha {self.mmd_alpha} is below the smallest p-value "
                                f"{self.mmd_permutations} permutations can give")


@dataclass(frozen=True)
class Window:
    """One window of frame signals: count, per-signal sums, and sampled frames."""

    frames: int
    sums: F64
    samples: F64  # [k, D], k >= 0
    first_frame: int = 0  # frame id (or stream position) of the window's first frame
    end_frame: int = 0  # ... and of the frame after its last
    detections: float | None = None  # mean detections per frame (the output channel)

    @staticmethod
    def of(frames: npt.NDArray[np.floating], sample_k: int, rng: np.random.Generator,
           end_frame: int = 0, detections: npt.NDArray[np.floating] | None = None) -> Window:
        """A window from raw frame signals [n, D] (and detections per frame [n]) with
        `sample_k` frames sampled, ending before stream position `end_frame`."""
        x = np.asarray(frames, np.float64)
        k = min(sample_k, len(x))
        idx = np.sort(rng.choice(len(x), size=k, replace=False)) if k else np.zeros(0, int)
        det = None if detections is None else float(np.mean(detections))
        return Window(len(x), x.sum(axis=0), x[idx], end_frame - len(x), end_frame, det)

    @property
    def mean(self) -> F64:
        return self.sums / max(self.frames, 1)


@dataclass(frozen=True)
class Baseline:
    """What no drift looks like for one model: see the module docstring."""

    names: tuple[str, ...]
    mean: F64
    std: F64
    whitener: F64
    threshold: float
    window_frames: int
    reference: F64  # reference frames used by the MMD test [m, D] (adjusted, see beta)
    # How the signals move with the detections per frame in the reference (a change in
    # the defect rate is not image drift): window means are adjusted by
    # beta * (detections - det_mean) before they are compared. None: not adjusted.
    beta: F64 | None = None
    det_mean: float = 0.0
    # Threshold of the per-channel CUSUMs (inf: not used); calibrated jointly with
    # `threshold` so that the pair meets the target false-alarm rate.
    channel_threshold: float = float("inf")
    # The allowances calibrated with this baseline: the configured ones plus the
    # reference's estimation margin (MCUSUM: a number; channel CUSUMs: one per whitened
    # signal). None (a baseline stored before they existed): the configured allowance.
    allowance: float | None = None
    channel_allowance: F64 | None = None

    def adjust(self, mean: F64, detections: float | None) -> F64:
        """A window's mean signals as if its defect rate were the reference's."""
        if self.beta is None or detections is None:
            return mean
        return np.asarray(mean - self.beta * (detections - self.det_mean), np.float64)


@dataclass(frozen=True)
class Alert:
    """A confirmed drift: when it began (stream frame), the channels that moved
    (name, shift in reference standard deviations), the CUSUM and MMD evidence."""

    onset_frame: int  # first frame of the window where the evidence began to accumulate
    detected_frame: int  # end of the window that raised it
    channels: tuple[tuple[str, float], ...]
    statistic: float
    threshold: float
    mmd_p_value: float


def _shrunk_cov(x: F64, shrinkage: float, sd_floor: float) -> F64:
    """The covariance shrunk toward its own diagonal (never toward a scaled identity,
    which would drown a signal with a tiny spread in the others' variance), plus
    `sd_floor`**2 in every direction."""
    cov = np.cov(x, rowvar=False)
    diag = np.diag(np.diag(cov))
    return np.asarray((1 - shrinkage) * cov + shrinkage * diag
                      + np.eye(len(cov)) * max(sd_floor, 1e-6) ** 2, np.float64)


def _inv_sqrt(cov: F64) -> F64:
    vals, vecs = np.linalg.eigh(cov)
    vals = np.maximum(vals, vals.max() * 1e-9)
    return np.asarray((vecs / np.sqrt(vals)) @ vecs.T, np.float64)


def _block_means(ref: F64, n_windows: int, window_frames: int, block: int,
                 rng: np.random.Generator) -> F64:
    """Window means of a stream block-bootstrapped from `ref` [n_windows, D]."""
    m = len(ref)
    block = max(1, min(block, m))
    blocks_per_window = -(-window_frames // block)
    starts = rng.integers(0, m - block + 1, size=(n_windows, blocks_per_window))
    csum = np.vstack([np.zeros((1, ref.shape[1])), np.cumsum(ref, axis=0)])
    sums = (csum[starts + block] - csum[starts]).sum(axis=1)
    return np.asarray(sums / (block * blocks_per_window), np.float64)


def mcusum_path(z: F64, allowance: float, start: F64 | None = None) -> tuple[F64, F64]:
    """Crosier's MCUSUM over whitened window means z [T, D] (or [T, R, D]: R streams at
    once): the statistic after each window [T] ([T, R]) and the final accumulator."""
    s = np.zeros(z.shape[1:]) if start is None else start.copy()
    stats = np.empty(z.shape[:-1])
    for t, zt in enumerate(z):
        c = s + zt
        norm = np.sqrt(np.sum(c * c, axis=-1, keepdims=True))
        s = c * np.maximum(1.0 - allowance / np.maximum(norm, 1e-12), 0.0)
        stats[t] = np.sqrt(np.sum(s * s, axis=-1))
    return stats, s


def channel_cusum_path(z: F64, allowance: float | F64, start: F64 | None = None
                       ) -> tuple[F64, F64]:
    """Two-sided CUSUMs per whitened channel over z [T, D] (or [T, R, D]): the largest
    of them after each window [T] ([T, R]) and the final accumulators [2, D] (upper,
    lower; [2, R, D])."""
    s = np.zeros((2, *z.shape[1:])) if start is None else start.copy()
    stats = np.empty(z.shape[:-1])
    for t, zt in enumerate(z):
        s[0] = np.maximum(s[0] + zt - allowance, 0.0)
        s[1] = np.maximum(s[1] - zt - allowance, 0.0)
        stats[t] = np.max(s, axis=(0, -1))
    return stats, s


def _joint_thresholds(maxima: F64, rate: float) -> tuple[float, ...]:
    """Thresholds [K] for K statistics whose per-replicate maxima are `maxima` [R, K],
    such that a replicate in which any statistic passes its threshold has probability
    `rate`: the same level of each statistic's own null distribution (the min of their
    p-values, calibrated jointly)."""
    r, k = maxima.shape
    ranks = np.argsort(np.argsort(maxima, axis=0), axis=0) / max(r - 1, 1)  # ECDF level
    level = float(np.quantile(ranks.max(axis=1), 1.0 - rate))
    return tuple(float(np.quantile(maxima[:, j], level)) for j in range(k))


def min_reference_frames(window_frames: int) -> int:
    """The fewest reference frames a baseline for windows of `window_frames` is built
    from (four windows' worth, and at least 50)."""
    return max(50, 4 * window_frames)


def build_baseline(reference: npt.NDArray[np.floating], names: tuple[str, ...],
                   window_frames: int, config: DetectorConfig, seed: int = 0,
                   detections: npt.NDArray[np.floating] | None = None) -> Baseline:
    """Calibrate a baseline from reference frames [m, D] in capture order, and their
    detections per frame [m] when known (then the signals' dependence on the defect
    rate is regressed out).

    Raises DetectorError for too few frames (< 4 windows or < 50), a width that does
    not match `names`, or non-finite values."""
    ref = np.asarray(reference, np.float64)
    if ref.ndim != 2 or ref.shape[1] != len(names):
        raise DetectorError(f"reference has shape {ref.shape}; expected [m, {len(names)}]")
    if len(ref) < min_reference_frames(window_frames):
        raise DetectorError(f"reference has {len(ref)} frames; at least "
                            f"{min_reference_frames(window_frames)} are needed")
    if not np.isfinite(ref).all():
        raise DetectorError("reference holds non-finite values")
    if window_frames < 1:
        raise DetectorError("window_frames must be >= 1")
    rng = np.random.default_rng(seed)
    beta, det_mean = None, 0.0
    if detections is not None:
        d = np.asarray(detections, np.float64).reshape(-1)
        if d.shape != (len(ref),) or not np.isfinite(d).all():
            raise DetectorError(f"detections have shape {d.shape}; expected [{len(ref)}]")
        det_mean = float(d.mean())
        spread = float(((d - det_mean) ** 2).sum())
        if spread > 0:
            beta = ((ref - ref.mean(axis=0)).T @ (d - det_mean)) / spread
            ref = ref - np.outer(d - det_mean, beta)
    mu = ref.mean(axis=0)
    w = _inv_sqrt(_shrunk_cov(ref, config.shrinkage, config.sd_floor))
    n_windows = -(-FRAMES_PER_RATE // window_frames)
    reps = config.bootstrap_replicates
    # Phase-I error: the mean the detector will use is itself an estimate; its error,
    # whitened at the window size, widens the allowances (module docstring).
    mu_stars = np.vstack([_block_means(ref, 1, len(ref), config.block_frames, rng)[0]
                          for _ in range(reps)])
    errors = (mu_stars - mu) @ w.T * np.sqrt(window_frames)  # [R, D]
    allowance = config.allowance + float(np.quantile(np.linalg.norm(errors, axis=1),
                                                     config.phase1_quantile))
    channel_allowance = None if config.channel_allowance is None else np.asarray(
        config.channel_allowance + np.quantile(np.abs(errors), config.phase1_quantile,
                                               axis=0), np.float64)
    z = np.empty((n_windows, reps, len(mu)))
    for r in range(reps):
        means = _block_means(ref, n_windows, window_frames, config.block_frames, rng)
        z[:, r] = (means - mu_stars[r]) @ w.T * np.sqrt(window_frames)
    columns = []
    if config.multivariate:
        columns.append(mcusum_path(z, allowance)[0].max(axis=0))
    if channel_allowance is not None:
        columns.append(channel_cusum_path(z, channel_allowance)[0].max(axis=0))
    if not columns:
        raise DetectorError("the detector needs the MCUSUM, the channel CUSUMs or both")
    found = list(_joint_thresholds(np.stack(columns, axis=1), config.false_alarms_per_10k))
    h = found.pop(0) if config.multivariate else float("inf")
    h_channel = found.pop(0) if channel_allowance is not None else float("inf")
    pick = rng.choice(len(ref), size=min(config.mmd_reference_frames, len(ref)), replace=False)
    return Baseline(names, mu, np.maximum(ref.std(axis=0), config.sd_floor), w, h,
                    window_frames, ref[np.sort(pick)], beta, det_mean, h_channel,
                    allowance, channel_allowance)


def mmd_test(x: F64, y: F64, permutations: int, rng: np.random.Generator) -> tuple[float, float]:
    """Unbiased MMD^2 with a Gaussian kernel (median heuristic) between samples x [m, D]
    and y [n, D] (both already standardised); returns (statistic, permutation p-value
    counting the observed statistic: (1 + #{perm >= obs}) / (1 + permutations))."""
    z = np.vstack([x, y])
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
    med = float(np.median(d2[np.triu_indices(len(z), 1)]))
    k = np.exp(-d2 / max(med, 1e-12))
    np.fill_diagonal(k, 0.0)
    m, n = len(x), len(y)
    # Row 0 is the observed split; the others are permutations. With a = 1 on the x
    # side, a'Ka / m(m-1) + b'Kb / n(n-1) - 2 a'Kb / mn is the unbiased estimate.
    labels = np.zeros((permutations + 1, m + n))
    labels[0, :m] = 1.0
    for i in range(1, permutations + 1):
        labels[i, rng.permutation(m + n)[:m]] = 1.0
    ka = labels @ k
    total = k.sum()
    aka = np.sum(ka * labels, axis=1)
    akb = np.sum(ka, axis=1) - aka
    bkb = total - aka - 2.0 * akb
    stats = aka / (m * (m - 1)) + bkb / (n * (n - 1)) - 2.0 * akb / (m * n)
    observed = float(stats[0])
    exceed = int(np.sum(stats[1:] >= observed - 1e-12))
    return observed, (1.0 + exceed) / (1.0 + permutations)


@dataclass
class WindowRecord:
    """What the detector remembers of one recent window."""

    first_frame: int
    end_frame: int
    frames: int
    sums: F64
    z: F64
    samples: F64


@dataclass
class DetectorState:
    """What the detector carries between windows (stored by the cloud's monitor)."""

    accumulator: F64
    frames_seen: int = 0
    # The per-channel CUSUMs [2, D] (upper, lower); None: all zero.
    channel_accumulator: F64 | None = None
    history: list[WindowRecord] = field(default_factory=list)
    pending_windows: int = 0
    latched: bool = False
    last_statistic: float = 0.0
    last_channel_statistic: float = 0.0


def change_point(z: F64) -> int:
    """The most likely start of a mean shift in whitened window means z [T, D]: the
    index tau maximising ||sum(z[tau:])||^2 / (T - tau) (the likelihood ratio of a
    shift in the mean of N(0, I) data starting at tau)."""
    tail = np.cumsum(z[::-1], axis=0)[::-1]  # tail[t] = sum(z[t:])
    lengths = np.arange(len(z), 0, -1, dtype=np.float64)
    return int(np.argmax(np.sum(tail * tail, axis=1) / lengths))


class DriftDetector:
    """One line running one model. `update(window)` returns an Alert or None."""

    def __init__(self, baseline: Baseline, config: DetectorConfig, seed: int = 0,
                 state: DetectorState | None = None) -> None:
        self.baseline = baseline
        self.config = config
        self._rng = np.random.default_rng(seed)
        self.state = state or DetectorState(np.zeros(len(baseline.names)))

    def reset(self) -> None:
        """Forget the accumulated evidence and unlatch (after an acknowledged alert)."""
        self.state = DetectorState(np.zeros(len(self.baseline.names)),
                                   frames_seen=self.state.frames_seen)

    def update(self, window: Window) -> Alert | None:
        """Feed one window; raises DetectorError for a window of another width or with
        non-finite values."""
        b, st, cfg = self.baseline, self.state, self.config
        if window.sums.shape != b.mean.shape or not np.isfinite(window.sums).all():
            raise DetectorError(f"window has {window.sums.shape} sums; expected {b.mean.shape}")
        if window.frames == 0:
            return None
        st.frames_seen += window.frames
        mean = b.adjust(window.mean, window.detections)
        z = (mean - b.mean) @ b.whitener.T * np.sqrt(window.frames)
        allowance = cfg.allowance if b.allowance is None else b.allowance
        stats, st.accumulator = mcusum_path(z[None, :], allowance, st.accumulator)
        st.last_statistic = float(stats[0])
        alarm = st.last_statistic > b.threshold
        if math.isfinite(b.channel_threshold) and cfg.channel_allowance is not None:
            start = st.channel_accumulator
            if start is None:
                start = np.zeros((2, len(z)))
            channel_allowance = (cfg.channel_allowance if b.channel_allowance is None
                                 else b.channel_allowance)
            cstats, st.channel_accumulator = channel_cusum_path(
                z[None, :], channel_allowance, start)
            st.last_channel_statistic = float(cstats[0])
            alarm |= st.last_channel_statistic > b.channel_threshold
        samples = np.asarray(window.samples, np.float64)
        if len(samples):
            samples = samples + (mean - window.mean)
        st.history.append(WindowRecord(window.first_frame, window.end_frame, window.frames,
                                       mean * window.frames, z, samples))
        del st.history[:-cfg.history_windows]
        if len(st.history) > _SAMPLED_WINDOWS:  # the MMD test uses the latest samples only
            old = st.history[-_SAMPLED_WINDOWS - 1]
            old.samples = old.samples[:0]
        if st.latched or not alarm:
            st.pending_windows = 0
            return None
        return self._confirm()

    def _confirm(self) -> Alert | None:
        b, st, cfg = self.baseline, self.state, self.config
        tau = change_point(np.vstack([w.z for w in st.history]))
        since = st.history[tau:]
        samples = [w.samples for w in since if len(w.samples)]
        recent = np.vstack(samples) if samples else np.zeros((0, len(b.names)))
        p = 1.0
        if len(recent) >= 8:
            if cfg.mmd_space == "whitened":
                x = (b.reference - b.mean) @ b.whitener.T
                y = (recent[-256:] - b.mean) @ b.whitener.T
            else:
                x = (b.reference - b.mean) / b.std
                y = (recent[-256:] - b.mean) / b.std
            _, p = mmd_test(x, y, cfg.mmd_permutations, self._rng)
        if p > cfg.mmd_alpha:
            st.pending_windows += 1
            if st.pending_windows >= cfg.confirm_windows:
                self.reset()
            return None
        st.latched = True
        frames = sum(w.frames for w in since)
        sums = np.sum([w.sums for w in since], axis=0)
        statistic, threshold = st.last_statistic, b.threshold
        if st.last_channel_statistic / b.channel_threshold > statistic / threshold:
            statistic, threshold = st.last_channel_statistic, b.channel_threshold
        return Alert(since[0].first_frame, since[-1].end_frame,
                     self.moved_channels(sums, frames), statistic, threshold, p)

    def moved_channels(self, sums: F64, frames: int) -> tuple[tuple[str, float], ...]:
        """Signals whose mean over `frames` frames (`sums`) is more than `channel_z`
        standard errors from the reference, largest first: (name, shift in reference
        standard deviations)."""
        b = self.baseline
        effect = (sums / max(frames, 1) - b.mean) / b.std
        zscore = effect * np.sqrt(frames)
        order = np.argsort(-np.abs(zscore))
        return tuple((b.names[i], round(float(effect[i]), 3)) for i in order
                     if abs(zscore[i]) > self.config.channel_z)[: self.config.max_channels]
