"""The exception tree of the wire contract.

Everything `protocol` raises on bad input is a `ProtocolError`, so a consumer (the
cloud collector, the appliance's command listener) can quarantine a message with a
single `except ProtocolError` and never crash on what arrived over MQTT.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every error `protocol` raises on bad input: a topic or payload that
    breaks the contract, or a config file its shared loader cannot use
    (`protocol.configfile.ConfigFileError`)."""


class InvalidTopic(ProtocolError):
    """A topic (or a site / line id) is not part of the lineguard topic tree."""


class PayloadTooLarge(ProtocolError):
    """A payload is longer than `MAX_PAYLOAD_BYTES`; it was not parsed."""


class MalformedPayload(ProtocolError):
    """A payload is not UTF-8 JSON, or does not validate against its schema's model."""


class UnknownSchema(ProtocolError):
    """The payload's `schema` is not one this build can read (missing, unknown or newer).

    Consumers must skip such a message (count it, keep it aside), never guess at it.
    """


class TopicMismatch(ProtocolError):
    """Payload and topic disagree: another line's or site's id, or another kind's schema."""
