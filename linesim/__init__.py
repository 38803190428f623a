"""A simulated production line: parts with labelled surface defects and drift knobs.

Used as the appliance's demo camera, and as a data source for demo training, tests and
benchmarks. Imports nothing of lineguard's own packages.
"""

from linesim.config import CLASSES, ConfigError, Drift, LineConfig
from linesim.dataset import export_yolo
from linesim.line import SimFrame, SimulatedLine, render
from linesim.render import DefectBox, RenderedPart, apply_drift

__all__ = [
    "CLASSES",
    "ConfigError",
    "DefectBox",
    "Drift",
    "LineConfig",
    "RenderedPart",
    "SimFrame",
    "SimulatedLine",
    "apply_drift",
    "export_yolo",
    "render",
]
