"""Registry test helpers: a migrated database and bundles that differ from the demo's."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from cloud.db import DatabaseConfig, open_engine, upgrade
from models.bundle import Bundle, load_bundle, write_bundle

DEMO = Path(__file__).resolve().parents[3] / "models" / "demo"
DEMO_BUNDLE = DEMO / "bundle"
DEMO_WEIGHTS = DEMO / "bundle-weights.pt"


def migrated_engine(url: str) -> Engine:
    cfg = DatabaseConfig(url=url)
    engine = open_engine(cfg)
    upgrade(engine, cfg)
    return engine


def demo_copy(out: Path, *, name: str = "demo", version: int = 1,
              label: str | None = None) -> Bundle:
    """The demo bundle rewritten with another name / version / label."""
    src = load_bundle(DEMO_BUNDLE)
    manifest = src.manifest.model_copy(update={
        "name": name, "version": version, "label": label or src.manifest.label, "files": {}})
    files = {rel: src.root / rel for rel in src.manifest.files}
    return write_bundle(out, manifest, files)
