"""Configuration of the cloud's database, collector, fleet store and fleet API (one YAML file).

Every section forbids unknown keys and carries units in its names. Errors are
`ConfigError`s naming the file, the key path and why, e.g.
``cloud.yaml: collector.broker.port: Input should be less than or equal to 65535``.

Example::

    database: {url: sqlite:////var/lib/lineguard-cloud/fleet.db}   # or postgresql+psycopg://...
    collector:
      group: collectors               # instances in one group share the messages
      broker:                         # the same keys as a line's `telemetry.broker`
        client_id: collector-a        # fixed per instance: it names the persistent session
        host: mqtt.plant1.example
        port: 8883
        username: collector
        password_file: /etc/lineguard-cloud/collector.secret
        tls: {ca_file: /etc/lineguard-cloud/ca.crt}
    api:
      port: 8080
      token_file: /etc/lineguard-cloud/api.token

Secrets can be inline (`password`, `token`) or, better, in a file (`password_file`,
`token_file`: the first line, stripped). Relative paths are relative to the working
directory of the process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from cloud.datasets.config import DatasetsConfig
from cloud.db.config import DatabaseConfig
from cloud.drift.config import DriftConfig
from cloud.errors import ConfigError
from cloud.registry.config import RegistryConfig
from cloud.release.config import ReleaseConfig
from cloud.retrain.config import RetrainConfig
from protocol import ProtocolError, validate_id
from protocol.backoff import BackoffConfig
from protocol.configfile import ConfigFileError, load_config_file, validate_mapping
from protocol.mqtt_config import CLIENT_ID_PATTERN, BrokerSetupError
from protocol.mqtt_config import BrokerConfig as MqttBrokerConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _read_secret(path: Path, what: str) -> SecretStr:
    try:
        text = path.read_text("utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read the {what} file {path}: {e.strerror}") from e
    first = text.splitlines()[0].strip() if text.strip() else ""
    if not first:
        raise ConfigError(f"the {what} file {path} is empty")
    return SecretStr(first)


class BrokerConfig(MqttBrokerConfig):
    """The shared broker settings (protocol/mqtt_config.py, the same keys as a line's
    `telemetry.broker`) with a collector's defaults: a fixed client id, and short
    reconnects: after a broker restart Mosquitto has forgotten the shared subscription
    until the collector is back, and lines wait only `reconnect_settle_s` (10 s by
    default) after their own reconnect before sending."""

    client_id: str = Field("lineguard-collector-1", pattern=CLIENT_ID_PATTERN)
    """Fixed per instance: the broker keeps this id's session (subscription and queued
    QoS 1 messages) while the collector is down. Two live instances must never share it."""
    reconnect: BackoffConfig = Field(
        default_factory=lambda: BackoffConfig(initial_s=1.0, max_s=5.0))

    def secret(self) -> SecretStr | None:
        """The password, read from `password_file` if that is set. Raises ConfigError."""
        try:
            return super().secret()
        except BrokerSetupError as e:
            raise ConfigError(str(e)) from e


class CollectorConfig(_Section):
    """`lineguard cloud collect`: one collector instance."""

    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    # Instances with the same group split the fleet's messages (MQTT 5 shared subscription).
    group: str = "collectors"
    # Worker processes (validation is CPU-bound: one process uses one core). With K > 1
    # the workers' client ids are `<broker.client_id>-0` ... `-<K-1>`; see
    # cloud/collector/workers.py before lowering K. They share `broker.username`: on a
    # broker with `use_username_as_clientid` (the shipped deploy/mosquitto config) that
    # makes them one session; there, run one worker per account (deploy/mosquitto/README.md).
    workers: int = Field(1, ge=1, le=64)
    # Also subscribe (not shared) to every line's retained `status` and `model`: MQTT 5
    # never sends retained messages to a shared subscription, so without this a new
    # fleet store would not know a line's state until the line next changed it.
    retained_state: bool = True
    # How long the broker keeps the session (and queues for it) while we are away.
    session_expiry_s: int = Field(7 * 24 * 3600, ge=60, le=2**32 - 2)
    # MQTT 5 Receive Maximum: QoS 1 messages the broker may send us before our acks.
    receive_maximum: int = Field(1000, ge=1, le=65535)
    # In-memory queue between paho's thread and the writer; >= receive_maximum so
    # acknowledged-later QoS 1 messages always fit (only QoS 0 can ever be dropped).
    queue_max_messages: int = Field(20_000, ge=1, le=1_000_000)
    # A batch is committed when it has this many messages or the queue runs empty.
    batch_max_messages: int = Field(500, ge=1, le=100_000)
    # After the first message of a batch, wait at most this long for more (0: commit as
    # soon as the queue is empty; more: fewer, larger commits under a trickle).
    batch_linger_ms: float = Field(0.0, ge=0.0, le=1000.0)
    # Under load (a batch finds a tenth of batch_max already queued) wait up to this long
    # for the batch to fill: the larger a commit, the fewer index pages it writes per
    # message, so a burst is stored with less CPU per message; a trickle is not delayed.
    busy_linger_ms: float = Field(50.0, ge=0.0, le=1000.0)
    # A failed commit (database locked, disk full) is retried after this backoff
    # (doubling up to the max); the batch is not acknowledged meanwhile. Shorter than a
    # reconnect's: a locked database frees up in milliseconds.
    store_retry: BackoffConfig = Field(
        default_factory=lambda: BackoffConfig(initial_s=0.1, max_s=10.0))
    # Counters go to the log this often (0: never).
    log_interval_s: float = Field(60.0, ge=0.0, le=86_400.0)
    # On SIGTERM: how long to wait for the queue to drain and the last acks to go out.
    stop_timeout_s: float = Field(10.0, gt=0.0, le=600.0)

    @model_validator(mode="after")
    def _check(self) -> CollectorConfig:
        try:
            validate_id(self.group, "group")
        except ProtocolError as e:
            raise ValueError(str(e)) from e
        if self.queue_max_messages < self.receive_maximum:
            raise ValueError(
                f"queue_max_messages ({self.queue_max_messages}) must be >= "
                f"receive_maximum ({self.receive_maximum})"
            )
        return self


# Keys of `store:` up to 0.1, now in `database:` (a config still using them is refused
# with the new key's name rather than a bare "extra inputs are not permitted").
_MOVED_STORE_KEYS: Final = {
    "path": "database.url (e.g. sqlite:////var/lib/lineguard-cloud/fleet.db: the same "
            "file, migrated on first start)",
    "busy_timeout_ms": "database.busy_timeout_ms",
    "synchronous": "database.synchronous",
    "wal_autocheckpoint_pages": "database.wal_autocheckpoint_pages",
}


class FleetStoreConfig(_Section):
    """The fleet store's own settings (where the database is: `database`)."""

    # Bytes of a quarantined payload kept for inspection (the length is always kept).
    quarantine_keep_bytes: int = Field(4096, ge=0, le=256 * 1024)

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: object) -> object:
        if isinstance(data, dict):
            moved = [f"{key} moved to {_MOVED_STORE_KEYS[key]}"
                     for key in data if key in _MOVED_STORE_KEYS]
            if moved:
                raise ValueError("; ".join(moved))
        return data


class ApiConfig(_Section):
    """`lineguard cloud serve`: the fleet API."""

    host: str = Field("127.0.0.1", min_length=1, max_length=253)
    port: int = Field(8080, ge=1, le=65535)
    # Bearer token for every endpoint but /health; at least 16 characters.
    token: SecretStr | None = None
    token_file: Path | None = None
    # Serve the OpenAPI spec (/openapi.json) without the token. Off: the spec needs the
    # token like the data does; /docs asks for the token and loads the spec with it.
    public_docs: bool = False

    @model_validator(mode="after")
    def _check(self) -> ApiConfig:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("set exactly one of token or token_file")
        return self

    def secret(self) -> SecretStr:
        """The bearer token, read from `token_file` if set. Raises ConfigError (unreadable
        file, or shorter than 16 characters)."""
        token = _read_secret(self.token_file, "token") if self.token_file else self.token
        if token is None or len(token.get_secret_value()) < 16:
            raise ConfigError("the API token must be at least 16 characters")
        return token


class CloudConfig(_Section):
    """The whole file. `collect` needs `collector`, `serve` needs `api`."""

    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    store: FleetStoreConfig = Field(default_factory=FleetStoreConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    release: ReleaseConfig = Field(default_factory=ReleaseConfig)
    collector: CollectorConfig | None = None
    api: ApiConfig | None = None
    datasets: DatasetsConfig = Field(default_factory=DatasetsConfig)
    # `lineguard cloud drift`: the drift monitor (docs/drift.md).
    drift: DriftConfig | None = None


def parse_config(data: object, source: str = "<config>") -> CloudConfig:
    """Validate an already-parsed document (None counts as empty). Raises ConfigError
    naming the bad keys."""
    try:
        return validate_mapping(CloudConfig, data, source)
    except ConfigFileError as e:
        raise ConfigError(str(e)) from None


def load_config(path: Path) -> CloudConfig:
    """Read and validate a YAML config file. Raises ConfigError (unreadable, not YAML
    (with line and column), not a mapping, or invalid; the message names the key path)."""
    try:
        return load_config_file(CloudConfig, path)
    except ConfigFileError as e:
        raise ConfigError(str(e)) from None
