"""Retraining's exceptions."""

from __future__ import annotations

from cloud.errors import CloudError


class RetrainError(CloudError):
    """A retrain could not start or finish; the message names the argument or step."""
