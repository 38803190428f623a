"""`lineguard cloud db upgrade|current`: the cloud database's schema (cloud/db)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from protocol.cliargs import HelpFormatter


def add_db_commands(
    command: Callable[[str, str], argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register `db` (with `upgrade` and `current`) through the parent's `command`."""
    db = command("db", "the cloud database's schema: migrate it, or show where it is")
    sub = db.add_subparsers(dest="db_cmd", required=True)
    for name, help_ in (
        ("upgrade", "apply every pending migration (an SQLite file is backed up first; "
                    "back PostgreSQL up with pg_dump before)"),
        ("current", "show the database's revisions and this build's (exit 1: not up to "
                    "date)"),
    ):
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        p.add_argument("--config", type=Path, required=True, help="cloud YAML config file")
    return db


def run_db(args: argparse.Namespace) -> int:
    """`lineguard cloud db ...`: 0 ok, 1 `current` found pending migrations, 2 error."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from cloud.config import load_config
    from cloud.db import (
        current_revisions,
        head_revisions,
        open_engine,
        pending_revisions,
        upgrade,
    )
    from cloud.errors import CloudError

    try:
        cfg = load_config(args.config)
        where = make_url(cfg.database.url).render_as_string(hide_password=True)
        engine = open_engine(cfg.database)
        try:
            if args.db_cmd == "upgrade":
                if not cfg.database.is_sqlite:
                    print(f"{where}: PostgreSQL is not backed up by this command; "
                          "take a pg_dump first if it holds data")
                applied = upgrade(engine, cfg.database)
                print(f"{where}: " + (f"migrated to {', '.join(applied)}" if applied
                                      else "already up to date"))
                return 0
            current = current_revisions(engine)
            pending = pending_revisions(engine)
        finally:
            engine.dispose()
    except CloudError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, SQLAlchemyError) as e:
        print(f"error: cannot use the cloud database: {e}", file=sys.stderr)
        return 2
    print(f"database: {where}")
    print(f"current:  {', '.join(sorted(current)) or '(empty: never migrated)'}")
    print(f"heads:    {', '.join(sorted(head_revisions()))}")
    if pending:
        print(f"pending:  {', '.join(sorted(pending))}: run `lineguard cloud db upgrade`")
        return 1
    print("up to date")
    return 0
