"""`lineguard appliance user ...`: the operator panel's accounts, in the store of a config.

    lineguard appliance user add NAME --role operator|engineer [--config FILE]
    lineguard appliance user passwd NAME [--config FILE]
    lineguard appliance user remove NAME [--config FILE]
    lineguard appliance user list [--config FILE] [--json]

A password is never a command-line argument (it would show in `ps` and the shell's
history): on a terminal it is asked twice without echo; otherwise the first line of
standard input is the password (`printf '%s\\n' "$PW" | lineguard appliance user add ...`).
These commands open the store as its one writer, so they need the appliance stopped;
while it runs they say so and change nothing.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from appliance.config import ApplianceConfig, load_config
from appliance.errors import StoreError, UserError
from appliance.store import Store
from appliance.users import MAX_PASSWORD_CHARS, ROLES, UserBook, check_name, check_password
from protocol.cliargs import HelpFormatter, add_logging_arguments


def _config(args: argparse.Namespace) -> ApplianceConfig:
    overrides = {} if args.data_dir is None else {"data_dir": str(args.data_dir)}
    return load_config(args.config, overrides)


def open_store_exclusive(cfg: ApplianceConfig) -> Store:
    """The config's store, opened and started by this command (the appliance must not be
    running: one writer per database). Raises StoreError saying so."""
    try:
        store = Store(cfg.store)
    except StoreError as e:
        if "another process holds the store open" in str(e):
            raise StoreError(f"{cfg.store.path} is open in a running appliance; stop it "
                             "first (systemctl stop lineguard-appliance), then retry") from e
        raise
    store.start()
    return store


def read_password(prompt: str = "Password: ") -> str:
    """A new password: asked twice without echo on a terminal, else the first line of
    stdin. Raises UserError if the two differ, stdin is empty, or the password is not
    acceptable (see `check_password`)."""
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if getpass.getpass("Repeat: ") != first:
            raise UserError("the two passwords differ; nothing changed")
        return check_password(first)
    line = sys.stdin.readline(MAX_PASSWORD_CHARS + 2)
    if not line:
        raise UserError("no password on standard input (expected one line)")
    return check_password(line.removesuffix("\n").removesuffix("\r"))


def user(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.user_command in ("add", "passwd", "remove"):
        check_name(args.name)  # before asking for a password or opening the store
    password = read_password() if args.user_command in ("add", "passwd") else ""
    store = open_store_exclusive(cfg)
    try:
        book = UserBook(store)
        if args.user_command == "add":
            added = book.add(args.name, args.role, password)
            print(f"user {added.name} added ({added.role})")
        elif args.user_command == "passwd":
            book.set_password(args.name, password)
            print(f"password of {args.name} changed")
        elif args.user_command == "remove":
            book.remove(args.name)
            print(f"user {args.name} removed")
        else:
            users = book.list()
            if args.json:
                print(json.dumps([{"name": u.name, "role": u.role} for u in users]))
            else:
                for u in users:
                    print(f"{u.name}\t{u.role}")
                if not users:
                    print("no users (add one: lineguard appliance user add NAME --role "
                          "operator)", file=sys.stderr)
    finally:
        store.stop()
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `user add|passwd|remove|list` to `lineguard appliance`."""
    top = sub.add_parser("user", formatter_class=HelpFormatter, description=__doc__,
                         help="panel accounts: add, passwd, remove, list")
    users = top.add_subparsers(dest="user_command", required=True)
    add = users.add_parser("add", formatter_class=HelpFormatter,
                           help="add an account (password from a prompt or stdin)")
    add.add_argument("--role", required=True, choices=ROLES,
                     help="operator: view, acknowledge, feedback; engineer: also "
                          "thresholds and rollback")
    passwd = users.add_parser("passwd", formatter_class=HelpFormatter,
                              help="set an account's password (from a prompt or stdin)")
    remove = users.add_parser("remove", formatter_class=HelpFormatter,
                              help="delete an account")
    listing = users.add_parser("list", formatter_class=HelpFormatter, help="list accounts")
    listing.add_argument("--json", action="store_true", help="print JSON on stdout")
    for parser in (add, passwd, remove):
        parser.add_argument("name", metavar="NAME", help="account name (lowercase letters, "
                            "digits, '.', '_', '-'; at most 32)")
    for parser in (add, passwd, remove, listing):
        parser.add_argument("--config", type=Path, help="YAML file (default: built-in "
                            "defaults)")
        parser.add_argument("--data-dir", type=Path,
                            help="override data_dir (where the store is) (default: the "
                                 "config's)")
        add_logging_arguments(parser, default_level="warning")
