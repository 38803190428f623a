"""Appliance telemetry over MQTT: an outbox in the appliance database, a paho-mqtt
publisher that drains it, and the `status`, `metrics`, `events/defect` and `model`
messages of the wire contract (protocol/).

Public API: `Telemetry` (wire it in app.py), `TelemetryConfig`, `TlsConfig`,
`pipeline_gauges`, `Gauges`, `TelemetryError`.
"""

from appliance.telemetry.config import TelemetryConfig, TlsConfig
from appliance.telemetry.errors import OutboxUnavailable, TelemetryError
from appliance.telemetry.gauges import pipeline_gauges
from appliance.telemetry.metrics import Gauges, GaugeSource
from appliance.telemetry.publisher import PublisherStats
from appliance.telemetry.service import Telemetry

__all__ = [
    "GaugeSource",
    "Gauges",
    "OutboxUnavailable",
    "PublisherStats",
    "Telemetry",
    "TelemetryConfig",
    "TelemetryError",
    "TlsConfig",
    "pipeline_gauges",
]
