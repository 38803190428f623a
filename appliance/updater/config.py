"""The `updates:` section: where the line's signed model assignment comes from and how a
new bundle is staged (shadow run, health window) before it is kept."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from protocol.backoff import BackoffConfig


class UpdatesConfig(BaseModel):
    """Verified model updates (TUF) for this line (`site`/`line` of the config).

    `cache_dir` holds the TUF metadata, downloads, the verified bundles and the state
    file (active, previous, trial counter); None: `<data_dir>/updates`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    """False: no agent runs and the state file is not read: `model.bundle` runs."""
    repository_url: str = Field(pattern=r"^https?://[^\s]+$", max_length=1000)
    """Base URL of the TUF repository (`<url>/metadata/`, `<url>/targets/`)."""
    trusted_root: Path
    """The root metadata this appliance trusts first (shipped with it, e.g. 1.root.json)."""
    cache_dir: Path | None = None
    """Where metadata, downloads, verified bundles and the state file live; None:
    `<data_dir>/updates`. Keep it on the data disk (bundles are renamed into it)."""
    poll_interval_s: float = Field(300.0, ge=0.05, le=86_400.0)
    """Seconds between two checks of the signed assignment (a cmd/update hint checks now)."""
    check_backoff: BackoffConfig = Field(default_factory=BackoffConfig)
    """Retry delays while the repository cannot be reached (the line keeps running)."""
    max_bundle_bytes: int = Field(2 * 1024**3, ge=1024, le=64 * 1024**3)
    """A bundle tar larger than this (as signed) is refused before download."""
    load_timeout_s: float = Field(300.0, gt=0.0, le=86_400.0)
    """A candidate that has not loaded (checks, golden set, warm-up) by then is refused;
    the line keeps its model (a load that hangs is left behind in its thread)."""
    shadow_frames: int = Field(50, ge=0, le=100_000)
    """Live frames the candidate judges beside the active model (0: no shadow run)."""
    shadow_timeout_s: float = Field(300.0, gt=0.0, le=86_400.0)
    """A shadow run that has not seen `shadow_frames` frames by then is refused."""
    min_agreement: float = Field(0.95, ge=0.0, le=1.0)
    """Fraction of shadow frames on which candidate and active agree (same verdict and
    matched boxes) below which the candidate is refused."""
    match_iou: float = Field(0.5, gt=0.0, le=1.0)
    """IoU at which two defect boxes of the same class are the same defect."""
    latency_budget_ms: float | None = Field(None, gt=0.0, le=60_000.0)
    """Refuse a candidate whose median single-frame time in the shadow run exceeds this
    (milliseconds); None: only the ratio below applies."""
    max_latency_ratio: float = Field(2.0, ge=1.0, le=100.0)
    """Refuse a candidate slower than this many times the active model (median
    single-frame time, both measured in the shadow run)."""
    latency_floor_ms: float = Field(1.0, ge=0.0, le=10_000.0)
    """A candidate is never refused for being slower by less than this (milliseconds):
    below it the difference is measurement noise."""
    health_frames: int = Field(100, ge=0, le=1_000_000)
    """Verdicts by the new model that make the health window (0: commit at once)."""
    health_timeout_s: float = Field(600.0, gt=0.0, le=86_400.0)
    """A health window that has not seen `health_frames` verdicts by then fails."""
    max_uninspected_increase: float = Field(0.02, ge=0.0, le=1.0)
    """Largest rise of the uninspected fraction against the previous model."""
    max_p99_latency_ratio: float = Field(3.0, ge=1.0, le=100.0)
    """Largest ratio of end-to-end latency p99, new model against previous."""
    max_defect_rate_shift: float = Field(0.25, ge=0.0, le=1.0)
    """Largest change (absolute) of the fail fraction against the previous model."""
    max_failed_starts: int = Field(3, ge=1, le=100)
    """Starts a bundle in trial may take; after that it is abandoned at the next start and
    the previous bundle runs again."""
