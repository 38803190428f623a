"""Panel accounts: argon2id hashes, rehash-on-verify, equal work for unknown names, the
`lineguard appliance user` CLI (password from stdin, never a flag)."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from argon2 import PasswordHasher

from appliance.cli import main as appliance_main
from appliance.config import load_config
from appliance.errors import UnknownUser, UserError, UserExists
from appliance.store import Store, StoreConfig
from appliance.users import User, UserBook
from tests.appliance.store_rig import open_store

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
"""Cheap parameters for tests (the default is ~64 MiB per hash)."""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path)
    yield s
    s.stop()


def stored_hash(store: Store, name: str) -> str:
    conn = sqlite3.connect(str(store.path))
    try:
        return str(conn.execute("SELECT password_hash FROM users WHERE name = ?",
                                (name,)).fetchone()[0])
    finally:
        conn.close()


def test_add_authenticate_list_remove(store: Store) -> None:
    book = UserBook(store, hasher=FAST)
    assert book.add("anna", "operator", "correct horse") == User("anna", "operator")
    book.add("ben.k", "engineer", "battery staple")
    assert book.list() == [User("anna", "operator"), User("ben.k", "engineer")]
    assert book.get("anna") == User("anna", "operator") and book.get("nobody") is None
    assert book.authenticate("anna", "correct horse") == User("anna", "operator")
    assert book.authenticate("anna", "wrong password") is None
    assert book.authenticate("nobody", "correct horse") is None
    assert book.authenticate("anna", "") is None
    digest = stored_hash(store, "anna")
    assert digest.startswith("$argon2id$") and "correct horse" not in digest
    book.set_password("anna", "new password 1")
    assert book.authenticate("anna", "correct horse") is None
    assert book.authenticate("anna", "new password 1") == User("anna", "operator")
    assert book.set_role("anna", "engineer") == User("anna", "engineer")
    book.remove("ben.k")
    assert [u.name for u in book.list()] == ["anna"]


@pytest.mark.parametrize(
    ("name", "role", "password", "error", "says"),
    [
        ("Anna", "operator", "long enough", UserError, "invalid user name 'Anna'"),
        ("", "operator", "long enough", UserError, "invalid user name"),
        ("a" * 33, "operator", "long enough", UserError, "1 to 32 characters"),
        ("a b", "operator", "long enough", UserError, "invalid user name"),
        ("anna", "admin", "long enough", UserError, "invalid role 'admin'"),
        ("anna", "operator", "short", UserError, "at least 8 characters"),
        ("anna", "operator", "x" * 257, UserError, "at most 256"),
        ("anna", "operator", "two\nlines!", UserError, "line breaks"),
    ],
)
def test_bad_accounts_are_refused_clearly(store: Store, name: str, role: str, password: str,
                                          error: type[Exception], says: str) -> None:
    book = UserBook(store, hasher=FAST)
    with pytest.raises(error, match=says):
        book.add(name, role, password)
    assert book.list() == []


def test_duplicates_and_unknown_names(store: Store) -> None:
    book = UserBook(store, hasher=FAST)
    book.add("anna", "operator", "correct horse")
    with pytest.raises(UserExists, match="'anna' already exists"):
        book.add("anna", "engineer", "other password")
    assert book.get("anna") == User("anna", "operator")
    with pytest.raises(UnknownUser, match="no user 'zoe'"):
        book.remove("zoe")
    with pytest.raises(UnknownUser):
        book.set_password("zoe", "long enough")


def test_outdated_hash_is_upgraded_when_its_password_is_verified(store: Store) -> None:
    UserBook(store, hasher=FAST).add("anna", "operator", "correct horse")
    old = stored_hash(store, "anna")
    stronger = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1)
    book = UserBook(store, hasher=stronger)
    assert book.authenticate("anna", "wrong password") is None
    assert stored_hash(store, "anna") == old  # a failed login changes nothing
    assert book.authenticate("anna", "correct horse") == User("anna", "operator")
    new = stored_hash(store, "anna")
    assert new != old and "m=2048,t=2,p=1" in new
    assert not stronger.check_needs_rehash(new)
    assert book.authenticate("anna", "correct horse") == User("anna", "operator")


class CountingHasher(PasswordHasher):
    """Records the hashes `verify` is asked to check."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verified.append(str(hash))
        return super().verify(hash, password)


def test_unknown_name_costs_a_hash_verification_too(store: Store) -> None:
    hasher = CountingHasher()
    book = UserBook(store, hasher=hasher)
    book.add("anna", "operator", "correct horse")
    assert book.authenticate("nobody", "correct horse") is None
    assert book.authenticate("anna", "wrong one!") is None
    assert len(hasher.verified) == 2
    assert all(c.startswith("$argon2id$") for c in hasher.verified)


# ---------------------------------------------------------------------- CLI
def run_cli(argv: list[str], stdin: str, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return appliance_main(argv)


def test_cli_add_list_passwd_remove(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    assert run_cli(["user", "add", "anna", "--role", "operator", *data],
                   "correct horse\n", monkeypatch) == 0
    assert "user anna added (operator)" in capsys.readouterr().out
    assert run_cli(["user", "add", "anna", "--role", "engineer", *data],
                   "correct horse\n", monkeypatch) == 1
    assert "'anna' already exists" in capsys.readouterr().err
    assert run_cli(["user", "list", "--json", *data], "", monkeypatch) == 0
    assert capsys.readouterr().out.strip() == '[{"name": "anna", "role": "operator"}]'
    assert run_cli(["user", "passwd", "anna", *data], "battery staple\n", monkeypatch) == 0
    store = Store(_cfg(tmp_path))
    store.start()
    try:
        book = UserBook(store)
        assert book.authenticate("anna", "battery staple") == User("anna", "operator")
    finally:
        store.stop()
    assert run_cli(["user", "remove", "anna", *data], "", monkeypatch) == 0
    assert run_cli(["user", "remove", "anna", *data], "", monkeypatch) == 1
    assert "no user 'anna'" in capsys.readouterr().err


def _cfg(tmp_path: Path) -> StoreConfig:
    """The store config of `--data-dir tmp_path`."""
    return load_config(None, {"data_dir": str(tmp_path)}).store


@pytest.mark.parametrize(
    ("argv", "stdin", "says"),
    [
        (["user", "add", "anna", "--role", "operator"], "", "no password on standard input"),
        (["user", "add", "anna", "--role", "operator"], "short\n", "at least 8"),
        (["user", "add", "Bad Name", "--role", "operator"], "long enough\n",
         "invalid user name"),
    ],
)
def test_cli_refuses_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str], argv: list[str],
                               stdin: str, says: str) -> None:
    assert run_cli([*argv, "--data-dir", str(tmp_path)], stdin, monkeypatch) == 1
    assert says in capsys.readouterr().err


def test_cli_has_no_password_flag_and_a_running_store_is_not_touched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run_cli(["user", "add", "anna", "--role", "operator", "--password", "x",
                 "--data-dir", str(tmp_path)], "", monkeypatch)
    capsys.readouterr()
    running = Store(_cfg(tmp_path))
    running.start()
    try:
        assert run_cli(["user", "add", "anna", "--role", "operator", "--data-dir",
                        str(tmp_path)], "correct horse\n", monkeypatch) == 1
        assert "open in a running appliance; stop it first" in capsys.readouterr().err
    finally:
        running.stop()
