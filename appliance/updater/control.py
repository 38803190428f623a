"""Local control of the update agent: the process lock and rollback requests.

The running appliance holds an exclusive `flock` on `<cache_dir>/agent.lock` for its
whole life; whoever else wants to change the update state (the offline
`lineguard appliance rollback`) must hold it too, so there is one owner of the state
file at any time. A running appliance is asked through a request file in
`<cache_dir>/control/` (written atomically, polled every 0.1 s by the agent) and answers
with a result file of the same id.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.updater.state import now_utc
from protocol.atomic import atomic_write_text

LOCK_FILE = "agent.lock"
CONTROL_DIR = "control"
REQUEST_FILE = "rollback.request.json"


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str = Field(pattern=r"^[0-9a-f]{8,32}$")
    to: str | None = Field(None, max_length=300)
    """`"<name>:<version>"` or `"<version>"` of a cached verified bundle; None: previous."""
    who: str = Field(min_length=1, max_length=200)
    source: str = Field("cli", max_length=40)
    at: datetime


class RollbackResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str
    ok: bool
    message: str
    active: str | None = None
    at: datetime


def new_request(to: str | None, who: str, source: str = "cli") -> RollbackRequest:
    return RollbackRequest(request_id=secrets.token_hex(8), to=to, who=who, source=source,
                           at=now_utc())


class AgentLock:
    """The exclusive lock on `<cache_dir>/agent.lock` (see the module docstring)."""

    def __init__(self, cache_dir: Path) -> None:
        self.path = Path(cache_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False if another process holds it."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def control_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / CONTROL_DIR


def write_request(cache_dir: Path, request: RollbackRequest) -> None:
    folder = control_dir(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / REQUEST_FILE, request.model_dump_json())


def take_request(cache_dir: Path) -> RollbackRequest | None:
    """The waiting request, removed from the folder (None: none; an invalid one is
    dropped)."""
    path = control_dir(cache_dir) / REQUEST_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    path.unlink(missing_ok=True)
    try:
        return RollbackRequest.model_validate_json(raw)
    except ValidationError:
        return None


def write_result(cache_dir: Path, result: RollbackResult) -> None:
    folder = control_dir(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"rollback.{result.request_id}.result.json",
                      result.model_dump_json())


def wait_result(cache_dir: Path, request_id: str, timeout_s: float) -> RollbackResult | None:
    """The agent's answer to a request, waiting up to `timeout_s` (None: no answer)."""
    path = control_dir(cache_dir) / f"rollback.{request_id}.result.json"
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(FileNotFoundError, ValidationError):
            result = RollbackResult.model_validate_json(path.read_bytes())
            path.unlink(missing_ok=True)
            return result
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)
