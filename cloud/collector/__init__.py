"""The cloud collector: a shared, persistent MQTT 5 subscription to every line's
telemetry, validated, de-duplicated and committed to the fleet store in batches, each
batch acknowledged to the broker only after its commit.

`Collector` wires it (`run(stop_event)`); `lineguard cloud collect --config FILE` runs it.
"""

from cloud.collector.mqtt import MqttSession
from cloud.collector.service import Collector, CollectorStats
from cloud.collector.validate import Delivery, classify, reason_of
from cloud.collector.writer import BatchWriter, WriterStats

__all__ = [
    "BatchWriter",
    "Collector",
    "CollectorStats",
    "Delivery",
    "MqttSession",
    "WriterStats",
    "classify",
    "reason_of",
]
