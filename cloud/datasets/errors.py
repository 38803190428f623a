"""The dataset index's exceptions (a branch of the cloud's tree, `cloud.errors`).

Every message names what is wrong: the file (and line) of a bad import, the reference
that does not resolve, the classes that conflict.
"""

from __future__ import annotations

from cloud.errors import CloudError


class DatasetError(CloudError):
    """Root of the dataset index's errors."""


class DatasetRejected(DatasetError):
    """Input refused (broken image, label out of range, unknown class, duplicate image
    with different labels, classes that do not agree); nothing was recorded."""


class UnknownDataset(DatasetError):
    """A reference (`NAME`, `NAME@3`, `NAME@<fingerprint prefix>`) names no version."""


class BadReference(DatasetError):
    """A reference that is not `NAME`, `NAME@NUMBER` or `NAME@HEXPREFIX`."""


class ObjectStoreError(DatasetError):
    """An object cannot be written or read (disk full, missing file, hash mismatch)."""


class SampleError(DatasetError):
    """An uploaded sample was refused (bad image, boxes outside the image, an id reused
    for another image); nothing was stored."""


class TokenError(DatasetError):
    """A line token is missing, wrong, or belongs to another line."""
