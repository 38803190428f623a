"""Command line of `python -m protocol.schemas`: regenerate or check generated files."""

from __future__ import annotations

import argparse
from pathlib import Path

from protocol.examples import render_readme
from protocol.schemas import SCHEMA_DIR, stale_json_schemas, write_json_schemas


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m protocol.schemas",
        description="Write the JSON Schema of every lineguard payload (and README examples).",
    )
    parser.add_argument(
        "outdir",
        nargs="?",
        type=Path,
        default=SCHEMA_DIR,
        help=f"folder for the *.json files (default: {SCHEMA_DIR})",
    )
    parser.add_argument(
        "--readme",
        type=Path,
        help="also regenerate the examples section of this README (protocol/README.md)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if any generated file is out of date",
    )
    return parser


def main(argv: list[str]) -> int:
    """Regenerate (or with --check, verify) schemas and README examples; exit status."""
    args = _parser().parse_args(argv)
    outdir: Path = args.outdir
    readme: Path | None = args.readme
    if args.check:
        stale = stale_json_schemas(outdir) if outdir.is_dir() else ["(folder missing)"]
        if readme is not None:
            text = readme.read_text("utf-8")
            if render_readme(text) != text:
                stale.append(str(readme))
        for name in stale:
            print(f"out of date: {name}")
        return 1 if stale else 0
    for path in write_json_schemas(outdir):
        print(f"wrote {path}")
    if readme is not None:
        text = readme.read_text("utf-8")
        readme.write_text(render_readme(text), "utf-8")
        print(f"updated examples in {readme}")
    return 0
