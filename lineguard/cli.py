"""Entry point of the `lineguard` console script.

Each subcommand lives in the package that owns it, as a module with
`main(argv: list[str]) -> int`; this router only picks the module and imports it on
demand, so the appliance's commands never import the cloud's (or torch).
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable
from typing import cast

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("appliance.demo", "run the shipped demo bundle on the simulated line"),
    "appliance": ("appliance.cli", "run or check the inspection appliance"),
    "bundle": ("models.cli", "verify, pack, unpack or inspect a model bundle"),
    "eval": ("models.cli_eval", "evaluate a bundle on a YOLO-format dataset (mAP, P, R)"),
    "linesim": ("linesim.cli", "simulated production line: preview frames, export datasets"),
    "cloud": ("cloud.cli", "cloud companion: training, collector, fleet API"),
}


def _usage() -> str:
    lines = ["usage: lineguard COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `lineguard COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Route `argv` to a subcommand; returns the process exit status."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"lineguard: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    module = importlib.import_module(COMMANDS[name][0])
    sub_main = cast(Callable[[list[str]], int], module.main)
    return sub_main(rest)
