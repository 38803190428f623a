"""Errors of the release side (TUF repository, keys, publishing, assignments)."""

from __future__ import annotations

from cloud.errors import CloudError


class ReleaseError(CloudError):
    """The TUF repository could not be read, signed or written."""


class SigningError(ReleaseError):
    """A role cannot be signed: no signer for enough of its keys, or a signer failed."""


class PublishRejected(ReleaseError):
    """A request was refused on purpose (gate not passed, unknown release, bad line)."""
