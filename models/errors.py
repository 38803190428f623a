"""The exception tree of the `models` package.

Every failure the package can report is a `ModelError`; callers (the appliance's
updater, the cloud's release step, the CLI) catch the root and show its message,
which always names what is wrong: the field path, the file, the archive member,
the tensor or the golden image.
"""

from __future__ import annotations

__all__ = [
    "BundleIntegrityError",
    "GoldenMismatchError",
    "ManifestError",
    "ModelError",
    "ModelShapeError",
    "RuntimeUnavailableError",
    "UnsafeArchiveError",
]


class ModelError(Exception):
    """Root of the `models` package's exceptions."""


class ManifestError(ModelError):
    """The manifest is missing, unparseable, has an unknown field or a bad value.

    The message names the field path (``postprocess.iou_threshold: ...``).
    """


class BundleIntegrityError(ModelError):
    """A bundle file is missing, unlisted, or its sha256 does not match; names the file."""


class UnsafeArchiveError(ModelError):
    """A tar member is absolute, climbs out with ``..``, is a link or device, is
    oversized or duplicated; names the member."""


class ModelShapeError(ModelError):
    """The ONNX model's inputs/outputs (or an output tensor) do not match the manifest.

    The message says what was expected and what was found.
    """


class GoldenMismatchError(ModelError):
    """The golden set does not reproduce; names the image and what differs."""


class RuntimeUnavailableError(ModelError):
    """A requested ONNX Runtime provider is unknown, or the session cannot be created."""
