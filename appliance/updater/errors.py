"""The update agent's errors (children of the appliance's `UpdateRejected` tree)."""

from __future__ import annotations

from appliance.errors import ApplianceError, UpdateRejected

__all__ = ["RepositoryUnavailable", "UpdateRejected", "UpdateStateError"]


class RepositoryUnavailable(ApplianceError):
    """The TUF repository could not be reached or answered badly (retried with backoff;
    not a verdict on the bundle)."""


class UpdateStateError(ApplianceError):
    """The update state file or a cached bundle cannot be used."""
