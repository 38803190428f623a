"""The appliance's exception tree: one root, one branch per concern.

Adapters translate library errors into these (`raise CaptureError(...) from e`); only the
web layer turns them into HTTP responses.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Root of every error the appliance raises on purpose."""


class ConfigError(ApplianceError):
    """The configuration is invalid; the message names the bad key path and why."""


class CaptureError(ApplianceError):
    """A frame source failed."""


class SourceLost(CaptureError):
    """The device or stream went away (or could not be opened); retrying may help."""


class FrameUnreadable(CaptureError):
    """One frame could not be read (an empty or non-image file) or is damaged (a
    truncated or inconsistent image); the source goes on with the next. `fault` is
    ``unreadable`` or ``corrupt``; the frame is recorded `uninspected` with that reason."""

    def __init__(self, fault: str, message: str, part_id: str | None = None) -> None:
        super().__init__(message)
        self.fault = fault
        self.part_id = part_id


class SourceEnded(CaptureError):
    """The source has no more frames (end of a file or folder that does not loop)."""


class EngineError(ApplianceError):
    """The inference engine failed to load or run a model."""


class NoModelError(EngineError):
    """No model could be loaded at start and the config does not allow starting without
    one (`model.allow_start_without_model`)."""


class StoreError(ApplianceError):
    """The local store could not persist or read records."""


class UpdateRejected(ApplianceError):
    """A model update was refused (signature, golden set, compatibility)."""


class UserError(ApplianceError):
    """A panel account operation was refused (bad name, role or password)."""


class UnknownUser(UserError):
    """No panel account has that name."""


class UserExists(UserError):
    """A panel account with that name already exists."""


class UnknownAlarm(ApplianceError):
    """No alarm has that id."""


class LabelError(ApplianceError):
    """Operator feedback could not be stored or exported."""


class UnknownFrame(LabelError):
    """No stored inspection has that frame id."""


class BadLabel(LabelError):
    """A label does not fit its frame (no such defect, a box outside the image, an
    unknown class, a frame without a kept image)."""
