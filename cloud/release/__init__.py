"""Signed releases: the TUF repository (python-tuf), its keys, publishing registry models
as bundles and signing per-line assignments. See docs/releases.md."""
