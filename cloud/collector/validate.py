"""Deliveries from the broker, and their validation (pure: no IO, no clock).

Every delivery is either `Received` (it passed `protocol.decode`) or `Rejected` with a
reason: the snake_case name of the `ProtocolError` subclass that `decode` raised
(`payload_too_large`, `invalid_topic`, `malformed_payload`, `unknown_schema`,
`topic_mismatch`), or `invalid_topic_encoding` for a topic that is not UTF-8.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final, NamedTuple

from cloud.fleet import Received, Rejected
from protocol import ProtocolError, decode

# Set by the collector when a topic's bytes are not UTF-8 (paho cannot decode them).
UNDECODABLE_TOPIC: Final = "\ufffd<topic is not UTF-8>"
STORE_REJECTED: Final = "store_rejected"

_CAMEL: Final = re.compile(r"(?<!^)(?=[A-Z])")


class Delivery(NamedTuple):
    """One PUBLISH received from the broker, not yet validated (a tuple: one is built
    per message on the network thread, and a tuple is built fastest).

    `mid` and `qos` are what the acknowledgement needs; `generation` counts the
    connections of our MQTT client, so an ack never goes out on a later connection
    than the one that delivered the message (the broker redelivers it there anyway).
    """

    topic: str
    payload: bytes
    mid: int
    qos: int
    received_at_ms: int
    generation: int


def reason_of(error: ProtocolError) -> str:
    """`MalformedPayload` -> `malformed_payload`."""
    return _CAMEL.sub("_", type(error).__name__).lower()


def classify(deliveries: Iterable[Delivery]) -> tuple[list[Received], list[Rejected]]:
    """Validate each delivery with `protocol.decode`; never raises for bad input."""
    received: list[Received] = []
    rejected: list[Rejected] = []
    for d in deliveries:
        if d.topic == UNDECODABLE_TOPIC:
            rejected.append(Rejected(d.topic, d.payload, "invalid_topic_encoding",
                                     "the topic is not valid UTF-8", d.received_at_ms))
            continue
        try:
            message = decode(d.topic, d.payload)
        except ProtocolError as e:
            rejected.append(Rejected(d.topic, d.payload, reason_of(e), str(e), d.received_at_ms))
            continue
        received.append(Received(message, d.payload, d.received_at_ms))
    return received, rejected
