"""`registry:` in the cloud config: where the model registry keeps its files (the
rows live in the cloud database, `database:`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict


class RegistryConfig(BaseModel):
    """The model registry. `root` holds `<name>/<version>/bundle/`, `weights.pt` and
    `gate/report.json|html` of every registered model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    root: Path = Path("registry")
