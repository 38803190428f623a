"""Panel accounts: names, roles and argon2id password hashes in the store's `users` table.

Invariants:
- Passwords are never stored or logged: only argon2id hashes (argon2-cffi's
  `PasswordHasher`), which carry their own salt and parameters. A hash made with older
  parameters is replaced by one with the current parameters the next time its password
  is verified (rehash-on-verify).
- `authenticate` does the same work for an unknown name as for a wrong password (it
  verifies against a dummy hash), so its timing does not tell which names exist.
- Writes go through the store's single writer (`Store.transact`); reads use their own
  read-only connection.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from appliance.errors import StoreError, UnknownUser, UserError, UserExists
from appliance.store import Store
from appliance.store.queries import open_reader

logger = logging.getLogger(__name__)

Role = Literal["operator", "engineer"]
ROLES: tuple[Role, ...] = get_args(Role)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")
NAME_RULE = ("1 to 32 characters: lowercase letters, digits, '.', '_' and '-', starting "
             "with a letter or digit")
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 256
WRITE_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role


def check_name(name: str) -> str:
    """`name` if it is a valid account name; raises UserError saying the rule."""
    if not NAME_RE.fullmatch(name):
        raise UserError(f"invalid user name {name!r}: {NAME_RULE}")
    return name


def check_role(role: str) -> Role:
    """`role` if it is one of ROLES; raises UserError."""
    for known in ROLES:
        if role == known:
            return known
    raise UserError(f"invalid role {role!r}: expected one of {', '.join(ROLES)}")


def check_password(password: str) -> str:
    """`password` if acceptable (length, printable, no line breaks); raises UserError."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise UserError(f"password too short: at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise UserError(f"password too long: at most {MAX_PASSWORD_CHARS} characters")
    if any(ch in password for ch in "\r\n\x00"):
        raise UserError("password must not contain line breaks or NUL")
    return password


class UserBook:
    """The panel's accounts in `store` (see the module docstring). `hasher` sets the
    argon2id parameters (default: argon2-cffi's RFC 9106 low-memory profile). Thread-safe."""

    def __init__(self, store: Store, *, hasher: PasswordHasher | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._hasher = hasher or PasswordHasher()
        self._clock = clock
        self._dummy: str | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ reads
    def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        try:
            conn = open_reader(self._store.path)
            try:
                return list(conn.execute(sql, params).fetchall())
            finally:
                conn.close()
        except sqlite3.Error as e:
            raise StoreError(f"{self._store.path}: reading users failed: {e}") from e

    def get(self, name: str) -> User | None:
        """The account called `name`, None if there is none."""
        rows = self._read("SELECT name, role FROM users WHERE name = ?", (name,))
        return User(str(rows[0][0]), check_role(str(rows[0][1]))) if rows else None

    def list(self) -> list[User]:
        """Every account, by name."""
        return [User(str(n), check_role(str(r)))
                for n, r in self._read("SELECT name, role FROM users ORDER BY name")]

    # ------------------------------------------------------------------ writes
    def _write(self, sql: str, params: tuple[object, ...]) -> int:
        """Run one statement on the writer; the number of rows it changed."""
        def work(conn: sqlite3.Connection) -> int:
            return conn.execute(sql, params).rowcount
        return self._store.transact(work, urgent=True).result(WRITE_TIMEOUT_S)

    def add(self, name: str, role: str, password: str) -> User:
        """Create an account. Raises UserError (bad name, role or password), UserExists,
        StoreError."""
        user = User(check_name(name), check_role(role))
        digest = self._hasher.hash(check_password(password))
        now = self._clock()
        added = self._write(
            "INSERT INTO users (name, role, password_hash, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
            (user.name, user.role, digest, now, now))
        if not added:
            raise UserExists(f"user {name!r} already exists")
        logger.info("user %s added with role %s", user.name, user.role)
        return user

    def remove(self, name: str) -> None:
        """Delete an account. Raises UnknownUser, StoreError."""
        if not self._write("DELETE FROM users WHERE name = ?", (name,)):
            raise UnknownUser(f"no user {name!r}")
        logger.info("user %s removed", name)

    def set_password(self, name: str, password: str) -> None:
        """Replace an account's password. Raises UserError, UnknownUser, StoreError."""
        digest = self._hasher.hash(check_password(password))
        if not self._write("UPDATE users SET password_hash = ?, updated_at = ? WHERE name = ?",
                           (digest, self._clock(), name)):
            raise UnknownUser(f"no user {name!r}")
        logger.info("password of user %s changed", name)

    def set_role(self, name: str, role: str) -> User:
        """Change an account's role. Raises UserError, UnknownUser, StoreError."""
        user = User(name, check_role(role))
        if not self._write("UPDATE users SET role = ?, updated_at = ? WHERE name = ?",
                           (user.role, self._clock(), name)):
            raise UnknownUser(f"no user {name!r}")
        return user

    # ------------------------------------------------------------------ login
    def _dummy_hash(self) -> str:
        with self._lock:
            if self._dummy is None:
                self._dummy = self._hasher.hash("not a password of anyone")
            return self._dummy

    def authenticate(self, name: str, password: str) -> User | None:
        """The account if `password` is its password, else None (unknown name, wrong
        password, malformed input: all alike, and alike in cost). Rehashes a hash made
        with outdated parameters. Raises StoreError only if the store cannot be read."""
        rows = self._read("SELECT role, password_hash FROM users WHERE name = ?", (name,))
        digest = str(rows[0][1]) if rows else self._dummy_hash()
        try:
            self._hasher.verify(digest, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if not rows:  # the dummy matched: impossible in practice, never a login
            return None
        user = User(name, check_role(str(rows[0][0])))
        if self._hasher.check_needs_rehash(digest):
            self._rehash(name, digest, password)
        return user

    def _rehash(self, name: str, old: str, password: str) -> None:
        try:
            self._write("UPDATE users SET password_hash = ?, updated_at = ?"
                        " WHERE name = ? AND password_hash = ?",
                        (self._hasher.hash(password), self._clock(), name, old))
        except StoreError as e:  # the login stands; the next one tries again
            logger.warning("could not rehash the password of %s: %s", name, e)
        else:
            logger.info("password hash of %s upgraded to the current parameters", name)
