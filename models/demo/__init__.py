"""The demo bundle that ships with lineguard as package data (`models/demo/bundle`).

It is found through `importlib.resources`, so an installed (non-editable) package has
its default model wherever it was installed. See README.md beside it for how the bundle
was made (`remake.sh`).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from models.errors import ModelError

__all__ = ["demo_bundle_dir"]


def demo_bundle_dir() -> Path:
    """The directory of the shipped demo bundle. Raises ModelError if the package is not
    installed as plain files (e.g. imported from a zip), where a bundle directory cannot
    be opened."""
    root = files(__name__) / "bundle"
    if not isinstance(root, Path):
        raise ModelError(f"the demo bundle is not on the file system ({root}); "
                         "install lineguard as files, not as a zip")
    return root.resolve()
