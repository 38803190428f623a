"""Shared helpers for the collector, fleet store and fleet API tests.

Messages are the protocol's README examples with a fresh id, line and time, so they
follow the contract as it evolves. Every wait here is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from protocol import (
    DefectEvent,
    Message,
    MetricsMessage,
    ModelRef,
    ModelReport,
    SizedDetection,
    StatusMessage,
    new_msg_id,
    prepare,
)
from protocol.examples import example_messages

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 3, 14, 9, 0, 0, tzinfo=UTC)
# Broker settings a fleet's mosquitto has (deploy/mosquitto/mosquitto.conf): without a
# larger queue, mosquitto drops QoS 1 messages for an offline session after 1000.
BROKER_CONF = "max_queued_messages 100000\n"


def _example(title: str) -> Any:
    for name, message in example_messages():
        if name == title:
            return message
    raise KeyError(title)


def _fresh(message: Any, site: str, line: str, sent_at: datetime, **update: object) -> Any:
    return message.model_copy(
        update={"msg_id": new_msg_id(), "site": site, "line": line, "sent_at": sent_at, **update}
    )


def metrics(site: str = "plant1", line: str = "line-1", sent_at: datetime = T0,
            **update: object) -> MetricsMessage:
    msg: MetricsMessage = _fresh(_example("metrics"), site, line, sent_at, **update)
    return msg


def defect(site: str = "plant1", line: str = "line-1", captured_at: datetime = T0,
           classes: tuple[str, ...] = ("scratches",), **update: object) -> DefectEvent:
    detections = [
        SizedDetection(class_id=i, class_name=name, score=0.9, box_xyxy=(1.0, 2.0, 30.0, 40.0))
        for i, name in enumerate(classes)
    ]
    msg: DefectEvent = _fresh(
        _example("events/defect"), site, line, captured_at + timedelta(milliseconds=50),
        captured_at=captured_at, defects=detections, **update,
    )
    return msg


def status(site: str = "plant1", line: str = "line-1", sent_at: datetime = T0, *,
           online: bool = True, will: bool = False, model_version: int | None = 7) -> StatusMessage:
    if will:
        msg: StatusMessage = _fresh(_example("status (last will)"), site, line, sent_at)
        return msg
    base = _example("status (online)")
    model = None if model_version is None else ModelRef(name="det", version=model_version)
    update: dict[str, object] = {"model": model}
    if not online:
        update.update(state="offline", reason="shutdown")
    msg = _fresh(base, site, line, sent_at, **update)
    return msg


def model_report(site: str = "plant1", line: str = "line-1", sent_at: datetime = T0,
                 version: int = 8) -> ModelReport:
    msg: ModelReport = _fresh(
        _example("model"), site, line, sent_at, current=ModelRef(name="det", version=version)
    )
    return msg


def drift(site: str = "plant1", line: str = "line-1", sent_at: datetime = T0) -> Message:
    msg: Message = _fresh(_example("drift"), site, line, sent_at)
    return msg


def command(site: str = "plant1", line: str = "line-1", sent_at: datetime = T0) -> Message:
    msg: Message = _fresh(_example("cmd/update"), site, line, sent_at)
    return msg


def wire(message: Message) -> tuple[str, bytes]:
    """(topic, payload) of a message."""
    out = prepare(message)
    return out.topic, out.payload


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str,
             interval_s: float = 0.05) -> None:
    """Poll until `predicate()` is true; raise TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    if predicate():
        return
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def query(db: str | Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """Run a read query (qmark placeholders) on a fleet database given by URL (or an
    SQLite file's path): an empty list while it or the table does not exist yet."""
    url = str(db) if isinstance(db, str) else sqlite_url(db)
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            return []
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return []
            raise
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1),
                         autocommit=True, connect_timeout=10) as pg:
        try:
            return pg.execute(sql.replace("?", "%s"), params).fetchall()  # type: ignore[arg-type]
        except psycopg.errors.UndefinedTable:
            return []


def stored_ids(db: str | Path) -> list[str]:
    return [row[0] for row in query(db, "SELECT msg_id FROM messages")]


def write_config(path: Path, port: int, db: str | Path, client_id: str = "collector-test",
                 **collector: object) -> Path:
    """A cloud config for `lineguard cloud collect`; `db`: a database URL or an SQLite
    file's path."""
    import yaml

    url = db if isinstance(db, str) else sqlite_url(db)
    doc = {
        "database": {"url": url},
        "collector": {"broker": {"port": port, "client_id": client_id},
                      "log_interval_s": 1.0, **collector},
    }
    path.write_text(yaml.safe_dump(doc), "utf-8")
    return path


class CollectorProcess:
    """`python -m lineguard cloud collect --config FILE` as a child process."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lineguard", "cloud", "collect", "--config",
                 str(self.config)],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env,
            )

    def log_text(self) -> str:
        return self.log.read_text("utf-8", errors="replace") if self.log.exists() else ""

    def children(self) -> list[int]:
        """Pids of the worker processes (with `collector.workers` > 1)."""
        if self.process is None:
            return []
        pid = self.process.pid
        try:
            with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def kill(self) -> None:
        """SIGKILL (workers too): no flush, no ack, no disconnect."""
        if self.process is not None and self.process.poll() is None:
            for child in self.children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status (SIGKILL after `timeout_s`)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise
        finally:
            self.process = None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None
