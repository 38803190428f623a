"""Configuration of the appliance's MQTT telemetry (pydantic, extra="forbid").

The broker settings (`telemetry.broker`) are the shared `BrokerConfig` of
protocol/mqtt_config.py, spelled exactly as the cloud collector's `collector.broker`.
Secrets are `SecretStr`: they never appear in a repr, a log line or a validation error.
Paths of TLS and password files are read when the client is built, not here, so
`check-config` on another machine does not need the files.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.mqtt_config import BrokerConfig, TlsConfig

__all__ = ["BrokerConfig", "TelemetryConfig", "TlsConfig"]


class TelemetryConfig(BaseModel):
    """Broker connection, outbox bounds and publishing rates.

    Delivery: every message (except `status`, which is state, not history) is written
    to the outbox table first and deleted only on the broker's acknowledgement (QoS 1).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    """Where the broker is and how to log in; `client_id` None: `line.<site>.<line>`, the
    line's broker account name (with the shipped broker config the broker uses the
    username as the client id in any case)."""
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    """`auto`: MQTT 5, falling back to 3.1.1 if the broker refuses the protocol version."""
    offline_alarm_s: float = Field(60.0, gt=0.0, le=86_400.0)
    """Raise a `telemetry_offline` event after the broker was unreachable this long."""

    metrics_interval_s: float = Field(10.0, ge=0.5, le=3600.0)
    """One `metrics` message per window of this length."""
    status_poll_s: float = Field(1.0, ge=0.1, le=60.0)
    """How often the status (model, sources, alarms) is checked for changes."""

    outbox_max_rows: int = Field(100_000, ge=10, le=10_000_000)
    """When the outbox holds this many rows the oldest `metrics` go first; when no
    `metrics` are left, new ones are refused. Events and model reports are kept."""
    outbox_hard_max_rows: int = Field(1_000_000, ge=10, le=100_000_000)
    """Disk safety net: beyond this, even events are refused (counted and alarmed)."""
    pending_max: int = Field(10_000, ge=10, le=1_000_000)
    """Messages handed over in memory but not yet written to the outbox; beyond this a
    new message is refused (counted), never waited for."""
    inflight_max: int = Field(32, ge=1, le=65_000)
    """Published and not yet acknowledged messages, live and backlog together."""
    backlog_inflight_max: int = Field(16, ge=1, le=65_000)
    """At most this many of the in-flight messages come from the backlog; the rest of
    the window stays free for live messages while a backlog drains."""
    backlog_rate_per_s: float = Field(500.0, gt=0.0, le=100_000.0)
    """Backlog messages sent per second at most after a reconnect."""
    flush_interval_ms: int = Field(20, ge=1, le=10_000)
    """Longest a handed-over message waits before it is written to the outbox."""
    busy_timeout_ms: int = Field(2000, ge=0, le=60_000)
    """SQLite busy timeout of the outbox's read-only connection (all writes go through the
    store's single writer thread)."""
    reconnect_settle_s: float = Field(10.0, ge=0.0, le=600.0)
    """After a reconnect (not the first connect of the process) only the `status` goes
    out at once; outbox messages wait this long, so that collectors can subscribe again
    first: after a broker restart Mosquitto restores sessions but not their shared
    subscriptions, and what is published before a collector is back never reaches it.
    Keep it above the collectors' `broker.reconnect.max_s`."""
    unrouted_retry_s: float = Field(2.0, ge=0.1, le=300.0)
    """MQTT 5 only: when the broker acknowledges a message with "no matching
    subscribers" (0x10; e.g. just after a broker restart, before the collector's shared
    subscription is back: Mosquitto does not persist shared subscriptions), the row stays
    in the outbox, sending pauses this long, then the outbox is sent again oldest first."""
    stop_grace_s: float = Field(2.0, ge=0.0, le=60.0)
    """On stop, how long to wait for in-flight and queued live messages to be acknowledged
    before disconnecting (what is left stays in the outbox for the next start)."""

    @model_validator(mode="after")
    def _bounds(self) -> TelemetryConfig:
        if self.outbox_hard_max_rows < self.outbox_max_rows:
            raise ValueError("outbox_hard_max_rows must be >= outbox_max_rows")
        if self.backlog_inflight_max > self.inflight_max:
            raise ValueError("backlog_inflight_max must be <= inflight_max")
        return self
