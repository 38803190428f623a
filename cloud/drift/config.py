"""`drift:` in the cloud config: the drift monitor (`lineguard cloud drift`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.mqtt_config import CLIENT_ID_PATTERN
from protocol.mqtt_config import BrokerConfig as MqttBrokerConfig


class DriftBrokerConfig(MqttBrokerConfig):
    """The shared broker settings with the monitor's fixed client id."""

    client_id: str = Field("lineguard-drift-1", pattern=CLIENT_ID_PATTERN)


class DriftConfig(BaseModel):
    """The drift monitor: one per fleet (or several in one `group`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    broker: DriftBrokerConfig = Field(default_factory=DriftBrokerConfig)
    # Monitors with the same group split the lines' drift windows (shared subscription).
    group: str = Field("drift", pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    # Target false-alarm rate: the probability of an alarm within 10,000 no-drift frames.
    false_alarms_per_10k: float = Field(0.1, gt=0.0, lt=1.0)
    # MCUSUM allowance (in whitened units per window): larger ignores smaller shifts.
    allowance: float = Field(2.5, gt=0.0, le=50.0)
    # Allowance of the per-signal CUSUMs on the whitened signals (whitened units per
    # window), which catch a shift of one or two signals sooner than the MCUSUM; null:
    # the MCUSUM alone. Both share the false-alarm target (one bootstrap calibrates both).
    channel_allowance: float | None = Field(1.0, gt=0.0, le=50.0)
    # Both allowances grow by this quantile of the reference mean's own estimation error
    # (whitened, per window), so that a line that never drifts does not alarm after
    # running long enough.
    phase1_quantile: float = Field(0.95, ge=0.5, lt=1.0)
    # Block bootstrap: replicates and block length (frames) for the threshold.
    bootstrap_replicates: int = Field(200, ge=20, le=5000)
    block_frames: int = Field(10, ge=1, le=1000)
    # Window test before an alert: MMD permutation test level and permutations.
    mmd_alpha: float = Field(0.002, gt=0.0, lt=1.0)
    mmd_permutations: int = Field(1000, ge=20, le=10_000)
    # An alarm the MMD test does not confirm within this many windows is dropped.
    confirm_windows: int = Field(4, ge=1, le=100)
    # A signal "moved" when its mean since the onset is this many standard errors away.
    channel_z: float = Field(4.0, gt=0.0, le=100.0)
    # Without a bundle reference: build the reference from the first frames (sampled
    # per window) a line runs a model on; this many sampled frames (never fewer than
    # four windows' worth, the detector's minimum).
    line_reference_frames: int = Field(400, ge=50, le=100_000)
    # Where bundle references are found: `<dir>/<name>/<version>/drift_reference.json`
    # (a bundle directory per version); None: references always come from the line.
    bundles_dir: Path | None = None
    # Severity of the alarm shown on the line's panel.
    alert_severity: Literal["info", "warning", "critical"] = "warning"
    # Ask for retraining (the datasets' `request_retrain`) once per alert.
    request_retrain: bool = True
    # The in-memory queue between MQTT and the detector (QoS 1 beyond it is re-sent).
    queue_max_messages: int = Field(10_000, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _mmd_reachable(self) -> DriftConfig:
        if self.mmd_alpha * (1 + self.mmd_permutations) < 1.0:
            raise ValueError(f"mmd_alpha {self.mmd_alpha} is below the smallest p-value "
                             f"{self.mmd_permutations} permutations can give")
        return self
