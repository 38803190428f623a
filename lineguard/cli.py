"""Entry point of the `lineguard` console script.

Each subcommand lives in the package that owns it, as a module with
`main(argv: list[str]) -> int` and `build_parser()`; this router only picks the module
and imports it on demand, so the appliance's commands never import the cloud's (or
torch). `lineguard --version` prints the installed distribution's version.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import cast

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("appliance.demo", "run the shipped demo bundle on the simulated line "
             "(`demo fleet`: broker, cloud and two lines)"),
    "demo-fleet": ("lineguard.fleet_demo.cli", "same as `demo fleet`"),
    "appliance": ("appliance.cli", "run or check the inspection appliance"),
    "bundle": ("models.cli", "verify, pack, unpack or inspect a model bundle"),
    "eval": ("models.cli_eval", "evaluate a bundle on a YOLO-format dataset (mAP, P, R)"),
    "linesim": ("lineguard.cli_linesim",
                "simulated production line: preview frames, export datasets"),
    "cloud": ("cloud.cli", "cloud companion: training, collector, fleet API"),
    "calibration": ("calibration.cli", "camera, mm-per-pixel and decision-threshold calibration"),
}


def _usage() -> str:
    lines = ["usage: lineguard [--version] COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `lineguard COMMAND --help` for a command's options.",
              "Every command logs to stderr (--log-level, --log-format text|json)."]
    return "\n".join(lines)


def version_line() -> str:
    """What `lineguard --version` prints: the installed distribution's version."""
    from protocol.app_version import app_version  # lazily: the router imports nothing

    return f"lineguard {app_version() or 'unknown (not installed as a package)'}"


def main(argv: list[str] | None = None) -> int:
    """Route `argv` to a subcommand; returns the process exit status."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0 if args else 2
    if args[0] in {"--version", "-V"}:
        print(version_line())
        return 0
    name, rest = args[0], args[1:]
    if name == "demo" and rest[:1] == ["fleet"]:  # the whole fleet, not one line
        name, rest = "demo-fleet", rest[1:]
    if name not in COMMANDS:
        print(f"lineguard: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    # each command sets up logging itself, from its --log-level / --log-format
    # (protocol.logsetup), so that `python -m` and tests get the same logs
    module = importlib.import_module(COMMANDS[name][0])
    sub_main = cast(Callable[[list[str]], int], module.main)
    return sub_main(rest)
