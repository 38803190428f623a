"""protocol.atomic: whole-or-nothing replacement, temp files cleaned up, modes kept."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from protocol.atomic import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    atomic_writer,
    fsync_dir,
    is_temp_name,
)


class Boom(Exception):
    pass


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("old", [None, b"old content"])
@pytest.mark.parametrize("new", [b"", b"new", bytes(range(256)) * 1000])
def test_write_bytes_replaces_the_whole_file(tmp_path: Path, old: bytes | None,
                                             new: bytes) -> None:
    target = tmp_path / "f.bin"
    if old is not None:
        target.write_bytes(old)
    atomic_write_bytes(target, new)
    assert target.read_bytes() == new
    assert _names(tmp_path) == ["f.bin"]


def test_write_text_is_utf8(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "t.json", "größe: 5 µm\n")
    assert (tmp_path / "t.json").read_bytes() == "größe: 5 µm\n".encode()


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    target.write_bytes(b"old")

    def write_half() -> None:
        with atomic_writer(target) as fh:
            fh.write(b"half of the new")
            raise Boom

    with pytest.raises(Boom):
        write_half()
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["manifest.json"]


def test_the_temp_file_is_beside_the_target_and_recognisable(tmp_path: Path) -> None:
    target = tmp_path / "img.jpg"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.is_file() and tmp.stat().st_size == 0
        assert is_temp_name(tmp.name)
        assert not target.exists()  # nothing is visible before the end
        tmp.write_bytes(b"jpeg")
    assert target.read_bytes() == b"jpeg"
    assert not tmp.exists()


@pytest.mark.parametrize(
    ("name", "temp"),
    [
        (".img.jpg.1a2b3c4d.tmp", True),
        (".x.tmp", True),
        ("img.jpg", False),
        ("img.jpg.tmp", False),  # not ours: no leading dot
        (".hidden", False),
    ],
)
def test_is_temp_name(name: str, temp: bool) -> None:
    assert is_temp_name(name) is temp


def test_new_files_get_the_usual_mode_not_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o644


def test_atomic_path_serves_writers_that_need_a_path(tmp_path: Path) -> None:
    """An SQLite backup (as the store's migrations take) written through atomic_path."""
    src = sqlite3.connect(":memory:")
    src.execute("CREATE TABLE t (x)")
    src.execute("INSERT INTO t VALUES (42)")
    src.commit()
    dest = tmp_path / "backup.db"
    with atomic_path(dest) as tmp:
        target = sqlite3.connect(str(tmp))
        try:
            src.backup(target)
        finally:
            target.close()
    check = sqlite3.connect(str(dest))
    try:
        assert check.execute("SELECT x FROM t").fetchall() == [(42,)]
    finally:
        check.close()
    assert _names(tmp_path) == ["backup.db"]


def test_atomic_path_cleans_up_on_error(tmp_path: Path) -> None:

    def write_partial() -> None:
        with atomic_path(tmp_path / "x") as tmp:
            tmp.write_bytes(b"partial")
            raise Boom

    with pytest.raises(Boom):
        write_partial()
    assert _names(tmp_path) == []


def test_missing_directory_is_an_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        atomic_write_bytes(tmp_path / "no" / "such" / "dir" / "f", b"x")


def test_fsync_dir_ignores_what_cannot_be_opened(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    fsync_dir(tmp_path / "missing")  # no exception
