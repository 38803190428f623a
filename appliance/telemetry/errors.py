"""Errors of the telemetry package (a branch of the appliance's exception tree)."""

from __future__ import annotations

from appliance.errors import ApplianceError


class TelemetryError(ApplianceError):
    """The telemetry outbox or the broker client could not do its job."""


class OutboxUnavailable(TelemetryError):
    """The outbox table could not be written or read right now (busy, disk full, I/O);
    retrying later may help."""
