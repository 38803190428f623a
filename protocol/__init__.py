"""The wire contract between a line's appliance and the cloud: MQTT topics and payloads.

Topics are `lineguard/<site>/<line>/<kind>` (see `protocol.topics`); payloads are JSON
validated by versioned pydantic models (see `protocol.registry`); `decode` and `encode`
(in `protocol.codec`) are the only ways bytes become messages and back. This package
imports nothing else of lineguard. The contract for other teams is README.md here.

It also holds the few helpers both processes share, each written once:
`protocol.backoff` (retry policy), `protocol.atomic` (durable file writes),
`protocol.configfile` (YAML config files with errors that name the key), and the MQTT
plumbing: `protocol.mqtt_config` (broker settings, one spelling for both processes) and
`protocol.mqtt_client` (the paho client factory behind the `MqttClient` seam; imported
on its own, so `import protocol` does not load paho).
"""

from protocol.alerts import AlertCommand
from protocol.codec import MAX_PAYLOAD_BYTES, Outgoing, decode, encode, prepare, topic_of
from protocol.commands import RollbackCommand, UpdateCommand
from protocol.defect import DefectEvent, DefectEventV1, Detection, SizedDetection
from protocol.drift import (
    BrightnessHistogram,
    ChannelStats,
    DriftSketch,
    DriftSketchV2,
    ReferenceInfo,
    SharpnessStats,
    SignalMoments,
)
from protocol.envelope import Envelope
from protocol.errors import (
    InvalidTopic,
    MalformedPayload,
    PayloadTooLarge,
    ProtocolError,
    TopicMismatch,
    UnknownSchema,
)
from protocol.fields import ModelRef, new_msg_id
from protocol.metrics import (
    DiskUsage,
    LatencyStage,
    LatencyStats,
    MetricsMessage,
    MetricsMessageV1,
    OutboxStats,
    QueueName,
    UninspectedReason,
    VerdictCounts,
)
from protocol.model_report import ModelReport, UpdateProgress
from protocol.registry import MESSAGE_TYPES, SCHEMAS, Message, schema_of
from protocol.status import StatusMessage, last_will
from protocol.topics import (
    COMMAND_KINDS,
    TOPIC_POLICY,
    TopicKind,
    TopicPolicy,
    alert_command_topic,
    command_filter,
    defect_event_topic,
    drift_topic,
    fleet_filter,
    line_client_id,
    metrics_topic,
    model_topic,
    parse_topic,
    rollback_command_topic,
    shared_fleet_filter,
    status_topic,
    topic_for,
    update_command_topic,
    validate_id,
)

__all__ = [
    "COMMAND_KINDS",
    "MAX_PAYLOAD_BYTES",
    "MESSAGE_TYPES",
    "SCHEMAS",
    "TOPIC_POLICY",
    "AlertCommand",
    "BrightnessHistogram",
    "ChannelStats",
    "DefectEvent",
    "DefectEventV1",
    "Detection",
    "DiskUsage",
    "DriftSketch",
    "DriftSketchV2",
    "Envelope",
    "InvalidTopic",
    "LatencyStage",
    "LatencyStats",
    "MalformedPayload",
    "Message",
    "MetricsMessage",
    "MetricsMessageV1",
    "ModelRef",
    "ModelReport",
    "OutboxStats",
    "Outgoing",
    "PayloadTooLarge",
    "ProtocolError",
    "QueueName",
    "ReferenceInfo",
    "RollbackCommand",
    "SharpnessStats",
    "SignalMoments",
    "SizedDetection",
    "StatusMessage",
    "TopicKind",
    "TopicMismatch",
    "TopicPolicy",
    "UninspectedReason",
    "UnknownSchema",
    "UpdateCommand",
    "UpdateProgress",
    "VerdictCounts",
    "alert_command_topic",
    "command_filter",
    "decode",
    "defect_event_topic",
    "drift_topic",
    "encode",
    "fleet_filter",
    "last_will",
    "line_client_id",
    "metrics_topic",
    "model_topic",
    "new_msg_id",
    "parse_topic",
    "prepare",
    "rollback_command_topic",
    "schema_of",
    "shared_fleet_filter",
    "status_topic",
    "topic_for",
    "topic_of",
    "update_command_topic",
    "validate_id",
]
