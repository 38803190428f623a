"""A real TUF repository served over HTTP on 127.0.0.1, and a line's view of it through
python-tuf's ngclient (a new Updater per check, `bootstrap=` the provisioned root)."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tuf.ngclient import Updater

from cloud.release.config import RoleExpiry
from cloud.release.initialise import init_repository
from cloud.release.keys import SignerPool, read_signers_file
from cloud.release.repository import Clock, Repository


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serve `root` read-only on a free port of 127.0.0.1; yield its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="tuf-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def new_repository(tmp: Path, *, clock: Clock | None = None,
                   expiry: RoleExpiry | None = None) -> tuple[Repository, Path]:
    """A fresh repository under tmp/repo with its keys in tmp/keys."""
    result = init_repository(tmp / "repo", tmp / "keys", expiry or RoleExpiry(),
                             clock=clock or (lambda: datetime.now(UTC)))
    return result.repository, tmp / "keys"


def reopen(repo: Repository, keys_dir: Path) -> Repository:
    """The same repository with the signers file re-read (after a rotation)."""
    return Repository(repo.root_dir, SignerPool(read_signers_file(keys_dir / "signers.json")),
                      repo.expiry)


@dataclass
class Line:
    """A line's TUF client state: its metadata dir persists between checks."""

    base_url: str
    home: Path
    trusted_root: bytes

    def updater(self) -> Updater:
        (self.home / "metadata").mkdir(parents=True, exist_ok=True)
        (self.home / "targets").mkdir(parents=True, exist_ok=True)
        return Updater(str(self.home / "metadata"),
                       metadata_base_url=f"{self.base_url}/metadata/",
                       target_base_url=f"{self.base_url}/targets/",
                       target_dir=str(self.home / "targets"), bootstrap=self.trusted_root)

    def fetch(self, target_path: str) -> bytes:
        """One check: refresh, find `target_path`, download and verify it."""
        updater = self.updater()
        updater.refresh()
        info = updater.get_targetinfo(target_path)
        if info is None:
            raise LookupError(f"{target_path} is not signed for this line")
        path = updater.download_target(info, str(self.home / "download.tmp"))
        return Path(path).read_bytes()
