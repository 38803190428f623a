"""Load the stand-alone scripts of deploy/mosquitto/ (not a package) for tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"


def load(name: str) -> ModuleType:
    """Import deploy/mosquitto/<name>.py once, as module `lineguard_deploy_<name>`."""
    module_name = f"lineguard_deploy_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, DEPLOY_DIR / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
