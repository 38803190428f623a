"""The version of the installed lineguard distribution: one source of truth.

The version is written once, in ``pyproject.toml``; installing the package records it
in the distribution's metadata, which this reads. `lineguard --version` prints it and
the appliance reports it as ``status.app_version``.
"""

from __future__ import annotations

from importlib import metadata

__all__ = ["DISTRIBUTION", "app_version"]

DISTRIBUTION = "lineguard"


def app_version() -> str | None:
    """The installed distribution's version (e.g. ``"0.1.0"``), or None when lineguard
    runs from a source tree that was never installed (there is then no version to
    report, and nothing is made up)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
