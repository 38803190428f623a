"""The machine a benchmark ran on, for its header and JSON line: ratios move between an
Intel and an AMD CPU, so every figure is printed with the CPU model and thread count.

    from bench.machine import cpu_model, machine_header
    print(machine_header())          # "CPU: <model>, <n> threads"
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else `platform.processor()`, else
    "unknown")."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_threads() -> int:
    """Hardware threads the OS reports (at least 1)."""
    return os.cpu_count() or 1


def machine_header() -> str:
    """`CPU: <model>, <threads> threads`: the first line of a benchmark's report."""
    return f"CPU: {cpu_model()}, {cpu_threads()} threads"
