"""The model registry's exceptions (all `CloudError`s)."""

from __future__ import annotations

from cloud.errors import CloudError


class RegistryError(CloudError):
    """The registry could not store, read or change a model; the message says why."""


class UnknownModel(RegistryError):
    """No model with that name and version is registered."""


class DuplicateModel(RegistryError):
    """name@version is already registered with different content (nothing is replaced)."""


class StateTransitionRefused(RegistryError):
    """The requested state change is not allowed (e.g. a refused model to approved)."""
