"""The calibration package's exceptions: one tree, every message a full sentence that
names the file, view or class it is about (the CLI prints it as one line)."""

from __future__ import annotations

__all__ = ["CalibrationError", "CalibrationMismatchError", "ThresholdError"]


class CalibrationError(Exception):
    """Bad calibration input or a calibration that cannot be trusted."""


class CalibrationMismatchError(CalibrationError):
    """A camera calibration differs from the one something was made for."""


class ThresholdError(CalibrationError):
    """Decision thresholds cannot be chosen from the given validation set."""
