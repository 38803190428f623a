"""The `uploads:` config section: which frames the line samples for labelling and how it
sends them to the cloud (appliance/uploads/, docs/datasets.md "The appliance side").

The token and CA files are read when the uploader runs (the token file before every
try, so a replaced token is picked up without a restart), not here: `check-config` on
another machine does not need them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.backoff import BackoffConfig

MiB = 1024 * 1024


class SharesConfig(BaseModel):
    """How the hourly budget is split between the sampling reasons (fractions summing
    to at most 1; operator-labelled frames are outside the budget)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    random: float = Field(0.4, ge=0.0, le=1.0)
    """Frames picked at random (see `random_fraction`)."""
    near_threshold: float = Field(0.4, ge=0.0, le=1.0)
    """Frames with a detection scoring within `margin` of its class threshold."""
    rare_class: float = Field(0.2, ge=0.0, le=1.0)
    """Frames with a detection of a class below `rare_share` of recent detections."""

    @model_validator(mode="after")
    def _sum(self) -> SharesConfig:
        total = self.random + self.near_threshold + self.rare_class
        if total > 1.0 + 1e-9:
            raise ValueError(f"shares must sum to at most 1, got {total:g}")
        return self


class UploadsConfig(BaseModel):
    """Active-learning sampling and the upload of sampled frames to the cloud API."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    """False: the section is kept but nothing is sampled or sent."""
    url: str = Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    """The cloud API's base URL (`https://cloud.example/api`); samples go to
    `{url}/lines/{site}/{line}/samples`. Use https: the token is a bearer secret."""
    token_file: Path
    """File holding this line's upload token (`lineguard cloud line token SITE/LINE`)."""
    ca_file: Path | None = None
    """CA bundle (PEM) to verify the cloud's certificate; None: the system's CAs."""
    dir: Path | None = None
    """Where sampled JPEGs wait for upload; None: `<data_dir>/uploads`."""
    budget_per_hour: int = Field(60, ge=0, le=100_000)
    """Sampled frames per clock hour (random, near-threshold and rare-class together)."""
    shares: SharesConfig = Field(default_factory=SharesConfig)
    random_fraction: float = Field(0.05, ge=0.0, le=1.0)
    """Share of frames that are random candidates (by a hash of the frame id); the
    budget then takes what it allows of them."""
    margin: float = Field(0.1, gt=0.0, le=1.0)
    """A detection is near its threshold when its score is at most threshold + margin."""
    rare_share: float = Field(0.05, gt=0.0, le=1.0)
    """A class is rare while it makes up less than this share of recent detections."""
    rare_window: int = Field(1000, ge=10, le=1_000_000)
    """How many recent detections the class shares are counted over."""
    operator_labels: bool = True
    """Upload every frame an operator labelled on the panel (outside the budget)."""
    operator_settle_s: float = Field(30.0, ge=0.0, le=86_400.0)
    """A labelled frame is sampled once its newest label is this old (the operator may
    still be labelling it)."""
    poll_s: float = Field(2.0, gt=0.0, le=600.0)
    """How often new operator labels are looked for, and an idle queue re-checked."""
    pending_max: int = Field(32, ge=1, le=10_000)
    """Sampled frames waiting in memory for encoding; beyond this a sampled frame is
    dropped (counted), never waited for: the verdict path is never slowed."""
    queue_max_items: int = Field(10_000, ge=1, le=10_000_000)
    """Samples waiting for upload; beyond this the oldest are dropped (an event)."""
    queue_max_bytes: int = Field(1024 * MiB, ge=MiB, le=1024 * 1024 * MiB)
    """Bytes of waiting JPEGs; beyond this the oldest are dropped (an event)."""
    jpeg_quality: int = Field(92, ge=50, le=100)
    """JPEG quality of sampled frames (operator-labelled frames send the kept image)."""
    timeout_s: float = Field(30.0, gt=0.0, le=600.0)
    """One upload's connect/read/write timeout."""
    backoff: BackoffConfig = Field(default_factory=BackoffConfig)
    """Waits between tries while the cloud is unreachable or answers 5xx."""
    auth_retry_s: float = Field(300.0, ge=1.0, le=86_400.0)
    """Wait between tries while the cloud refuses the token (401/403, alarmed)."""
