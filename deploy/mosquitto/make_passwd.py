#!/usr/bin/env python3
"""Create the mosquitto password file for every account named in a lineguard ACL.

Usage: make_passwd.py ACL_FILE OUTDIR [--mosquitto-passwd PATH]

For each `user NAME` in ACL_FILE (as written by make_acl.py) this keeps the secret in
OUTDIR/credentials/NAME if it exists, or generates a random one there (mode 0600; hand
it to that line's appliance config, whose `telemetry.broker.username` is the account
name; the shipped mosquitto.conf makes that name the client id too), then writes
OUTDIR/passwd with salted hashes made by `mosquitto_passwd -U` (Debian package
`mosquitto`: /usr/bin/mosquitto_passwd).
Passwords never appear on a command line. Running it again after adding lines keeps
the existing secrets. Point `password_file` in mosquitto.conf at OUTDIR/passwd and
reload mosquitto (SIGHUP).

This script depends only on the Python standard library (it runs on the broker host).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

# make_acl.py beside this script holds the one atomic file writer of these stdlib-only
# scripts; run as a script its folder is on the path already, loaded from elsewhere
# (the tests) it is put there.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.append(_HERE)
from make_acl import replace_file  # noqa: E402

logger = logging.getLogger(__name__)

_USER_RE = re.compile(r"^user\s+(\S+)\s*$", re.MULTILINE)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")
DEFAULT_MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"


class PasswdError(Exception):
    """An account name is unusable, or mosquitto_passwd is missing or failed."""


def accounts_in_acl(acl_text: str) -> list[str]:
    """The account names of the `user` lines of an ACL file, in order, without repeats.

    Raises PasswdError for a name the password file cannot hold.
    """
    names: list[str] = []
    for name in _USER_RE.findall(acl_text):
        if _NAME_RE.fullmatch(name) is None:
            raise PasswdError(f"account name {name!r} cannot go into a password file")
        if name not in names:
            names.append(name)
    return names


def find_mosquitto_passwd(explicit: str | None = None) -> str:
    """Path of the mosquitto_passwd tool; raises PasswdError if it is not installed."""
    found = explicit or shutil.which("mosquitto_passwd") or DEFAULT_MOSQUITTO_PASSWD
    if not os.access(found, os.X_OK):
        raise PasswdError(f"{found} not found; install the Debian package mosquitto")
    return found


def ensure_credentials(credentials_dir: Path, names: list[str]) -> dict[str, str]:
    """Read each account's secret from `credentials_dir/NAME`, creating missing ones.

    New secrets are 32 random URL-safe characters, written with mode 0600.
    """
    credentials_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    result = {}
    for name in names:
        path = credentials_dir / name
        if path.exists():
            secret = path.read_text("utf-8").strip()
        else:
            secret = secrets.token_urlsafe(24)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(secret + "\n")
            logger.info("new secret for %s in %s", name, path)
        if not secret or ":" in secret or "\n" in secret:
            raise PasswdError(f"secret in {path} is empty or holds ':' or a newline")
        result[name] = secret
    return result


def write_password_file(
    path: Path, credentials: Mapping[str, str], mosquitto_passwd: str | None = None
) -> None:
    """Write a mosquitto password file with hashed `credentials` (name -> password).

    The plain text exists only in a 0600 temporary file beside `path`, which
    `mosquitto_passwd -U` hashes in place before it replaces `path`.
    Raises PasswdError if mosquitto_passwd is missing or fails.
    """
    tool = find_mosquitto_passwd(mosquitto_passwd)
    for name, secret in credentials.items():
        if _NAME_RE.fullmatch(name) is None or not secret or ":" in secret or "\n" in secret:
            raise PasswdError(f"unusable account {name!r} or its password")

    def fill(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as f:
            f.writelines(f"{name}:{secret}\n" for name, secret in credentials.items())
        done = subprocess.run(
            [tool, "-U", str(tmp)], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise PasswdError(f"mosquitto_passwd -U failed: {done.stderr.strip()}")

    # mosquitto 2.x reads the file after dropping to its own user; keep it private to
    # the owner and group (chgrp it to mosquitto on a real broker).
    replace_file(path, fill, mode=0o640)


def main(argv: list[str]) -> int:
    """Command line entry point; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("acl_file", type=Path, help="ACL written by make_acl.py")
    parser.add_argument("outdir", type=Path, help="folder for passwd and credentials/")
    parser.add_argument("--mosquitto-passwd", help="path of the mosquitto_passwd tool")
    args = parser.parse_args(argv)
    try:
        names = accounts_in_acl(args.acl_file.read_text("utf-8"))
        outdir: Path = args.outdir
        outdir.mkdir(parents=True, exist_ok=True)
        credentials = ensure_credentials(outdir / "credentials", names)
        write_password_file(outdir / "passwd", credentials, args.mosquitto_passwd)
    except (OSError, PasswdError) as e:
        logger.error("make_passwd: %s", e)
        return 1
    logger.info("wrote %s (%d accounts)", outdir / "passwd", len(names))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
