"""`release:` in the cloud config: where the TUF repository lives, which signers sign
which keys, how long each role's metadata stays valid, and the rollout controller."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.mqtt_config import BrokerConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoleExpiry(_Section):
    """How long newly signed metadata of each role is valid. Root and targets are signed
    offline, rarely; snapshot and timestamp are re-signed by `release refresh` (a
    systemd timer), bundles and deploy whenever something is published or assigned."""

    root_days: int = Field(365, ge=1, le=3650)
    targets_days: int = Field(365, ge=1, le=3650)
    bundles_days: int = Field(90, ge=1, le=3650)
    deploy_days: int = Field(30, ge=1, le=3650)
    snapshot_days: int = Field(7, ge=1, le=365)
    timestamp_hours: int = Field(24, ge=1, le=24 * 365)


class HealthBounds(_Section):
    """What a healthy canary (or wave line) shows on the new model for a health window."""

    # Time to watch each stage's lines after they report the new model active.
    health_window_s: int = Field(900, ge=1, le=7 * 86_400)
    # A line that has not reported the new model active after this long fails the stage.
    activation_timeout_s: int = Field(1800, ge=10, le=7 * 86_400)
    # Parts judged on the new model before a stage can be called healthy.
    min_parts: int = Field(100, ge=0, le=10_000_000)
    # Uninspected parts / all parts on the new model.
    max_uninspected_rate: float = Field(0.02, ge=0.0, le=1.0)
    # Highest end-to-end p99 latency of any metrics window on the new model.
    max_latency_p99_ms: float = Field(500.0, gt=0.0, le=600_000.0)
    # Metrics windows on the new model with no engine running (engine errors).
    max_engine_error_windows: int = Field(0, ge=0, le=1_000_000)
    # |failed rate on the new model - failed rate on the previous one| (absolute).
    max_defect_rate_shift: float = Field(0.10, ge=0.0, le=1.0)
    # The previous model's failed rate comes from metrics of this long before the rollout.
    baseline_window_s: int = Field(3600, ge=60, le=30 * 86_400)


class RolloutConfig(_Section):
    """`lineguard cloud rollout-controller`: the loop that watches rollouts."""

    bounds: HealthBounds = Field(default_factory=HealthBounds)
    # How often the controller looks at every active rollout.
    interval_s: float = Field(15.0, gt=0.0, le=3600.0)
    # Broker to publish `cmd/update` hints on (None: no hints; lines find updates by polling).
    broker: BrokerConfig | None = None


class ReleaseConfig(_Section):
    """The TUF repository and its signers.

    `signers` maps a key id (as root or targets lists it) to a securesystemslib private
    key URI: `file2:/path/key.pem` for a key on disk, or e.g. `gcpkms:...`, `awskms:...`,
    `hsm:...` for a key that never leaves a KMS or HSM. `signers_file` (JSON, written by
    `release init` and `release rotate-root`) holds more of the same; `signers` wins.
    Only the keys a command needs are loaded: keep root and targets keys offline.
    """

    repository_dir: Path = Path("tuf-repository")
    signers_file: Path | None = None
    signers: dict[str, str] = Field(default_factory=dict)
    expiry: RoleExpiry = Field(default_factory=RoleExpiry)
    # `release refresh` re-signs an online role once less than this fraction of its
    # lifetime is left (0.5: a daily timestamp is re-signed after 12 h).
    refresh_when_left_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)

    @model_validator(mode="after")
    def _check(self) -> ReleaseConfig:
        for keyid, uri in self.signers.items():
            if not keyid or ":" not in uri:
                raise ValueError(f"signers.{keyid}: not a private key URI: {uri!r}")
        return self
