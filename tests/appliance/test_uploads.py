"""Sample uploads from the appliance: the bounded store-backed queue, and end to end
against the real cloud upload endpoint (uvicorn on 127.0.0.1, SQLite) killed and
restarted mid-upload, a wrong token (kept, alarmed, no tight loop) and operator-labelled
frames becoming a dataset version."""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance.alarms import AlarmBook
from appliance.labels import LabelBook
from appliance.records import InspectionRecord, Verdict
from appliance.store import Store
from appliance.store.schema.migrations import MIGRATIONS
from appliance.uploads.config import UploadsConfig
from appliance.uploads.queue import UploadQueue, spool_name
from appliance.uploads.service import AUTH_ALARM, Uploads
from cloud.datasets.inbox import SampleInbox
from cloud.datasets.index import DatasetIndex
from cloud.db import DatabaseConfig, open_engine, upgrade
from tests.appliance.test_store_images import noisy
from tests.appliance.test_store_writer import CLASSES, make_cfg, rec
from tests.cloud.fleet_helpers import REPO, wait_for
from tests.mqtt_broker import free_port

SITE, LINE = "plant1", "line1"  # each cloud test uploads as its own line


def record(i: int, verdict: Verdict = "pass", n_defects: int = 0) -> InspectionRecord:
    return dataclasses.replace(rec(i, verdict, n_defects=n_defects, image=noisy(i)),
                               model_version="demo:3")


def uploads_config(tmp_path: Path, url: str, **overrides: object) -> UploadsConfig:
    return UploadsConfig.model_validate({
        "url": url, "token_file": tmp_path / "upload.token", "dir": tmp_path / "spool",
        "budget_per_hour": 100_000, "random_fraction": 1.0,
        "shares": {"random": 1.0, "near_threshold": 0.0, "rare_class": 0.0},
        "operator_labels": False, "poll_s": 0.1, "timeout_s": 5.0,
        "backoff": {"initial_s": 0.05, "max_s": 0.3}, **overrides})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(make_cfg(tmp_path, images={"keep_pass_fraction": 1.0, "annotate_fails": False}))
    s.start()
    yield s
    s.stop()


# ---------------------------------------------------------------------- the queue
def test_the_queue_migration_is_applied_and_creates_its_tables(store: Store) -> None:
    # Its position is not the point (later migrations were merged after it): it is in
    # MIGRATIONS and a migrated store has its tables.
    assert "_v9_uploads" in [m.__name__ for m in MIGRATIONS]
    conn = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
    try:
        tables = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()
    assert {"upload_queue", "upload_marks"} <= tables


def test_queue_bound_drops_the_oldest_and_adding_twice_is_one_sample(
        store: Store, tmp_path: Path) -> None:
    queue = UploadQueue(store, tmp_path / "spool", max_items=3, max_bytes=1000)
    queue.recover()
    for n in range(3):
        assert queue.add(f"s1:{n}", f"s1:{n}", "random", "{}", b"x" * 100).dropped == ()
    again = queue.add("s1:0", "s1:0", "random", "{}", b"x" * 100)
    assert not again.added and again.dropped == ()
    assert queue.add("s1:3", "s1:3", "random", "{}", b"x" * 100).dropped == ("s1:0",)
    assert queue.sample_ids() == ["s1:1", "s1:2", "s1:3"]
    # items drop s1:1; then the bytes (1050 > 1000) drop s1:2 too
    assert queue.add("s1:4", "s1:4", "random", "{}", b"y" * 850).dropped == ("s1:1", "s1:2")
    assert queue.depth() == (2, 950)
    assert sorted(p.name for p in (tmp_path / "spool").iterdir()) == \
        sorted(spool_name(s) for s in ("s1:3", "s1:4"))
    oldest = queue.oldest()
    assert oldest is not None and oldest.sample_id == "s1:3"
    assert queue.image_bytes(oldest) == b"x" * 100


def test_an_operator_sample_supersedes_the_frames_queued_samples(store: Store,
                                                                 tmp_path: Path) -> None:
    queue = UploadQueue(store, tmp_path / "spool", max_items=10, max_bytes=10**6)
    queue.recover()
    queue.add("s1:1", "s1:1", "random", "{}", b"a")
    queue.add("s1:2", "s1:2", "random", "{}", b"b")
    queue.add("s1:1.op4", "s1:1", "operator", "{}", b"c", supersede=True)
    result = queue.add("s1:1.op7", "s1:1", "operator", "{}", b"d", supersede=True)
    assert result.added and result.replaced == 1
    assert queue.sample_ids() == ["s1:2", "s1:1.op7"]
    assert sorted(p.name for p in (tmp_path / "spool").iterdir()) == \
        sorted(spool_name(s) for s in ("s1:2", "s1:1.op7"))


def test_recover_removes_stray_files_and_rows_without_image(store: Store,
                                                            tmp_path: Path) -> None:
    queue = UploadQueue(store, tmp_path / "spool", max_items=10, max_bytes=10**6)
    queue.recover()
    queue.add("s1:1", "s1:1", "random", "{}", b"a")
    queue.add("s1:2", "s1:2", "random", "{}", b"b")
    (tmp_path / "spool" / spool_name("s1:2")).unlink()
    (tmp_path / "spool" / "stray.jpg").write_bytes(b"z")
    assert queue.recover() == (1, 1)
    assert queue.sample_ids() == ["s1:1"]


def test_the_verdict_listener_never_waits(store: Store, tmp_path: Path) -> None:
    """Not started (nobody encodes): the in-memory queue fills, the rest is dropped and
    counted at once."""
    cfg = uploads_config(tmp_path, "http://127.0.0.1:9", pending_max=2)
    uploads = Uploads(cfg, store, site=SITE, line=LINE, spool_dir=tmp_path / "spool",
                      thresholds=dict)
    for i in range(5):
        uploads.on_verdict(record(i))
    uploads.on_verdict(dataclasses.replace(record(9), image_bgr=None))  # nothing to send
    assert uploads.stats().dropped_busy == 3


# ---------------------------------------------------------------------- the real cloud
class Cloud:
    """The cloud's upload endpoint in its own process (tests/cloud/samples_server.py)
    over an SQLite database, killable and restartable on the same port."""

    def __init__(self, tmp_path: Path) -> None:
        self.url = f"sqlite:///{tmp_path / 'cloud.db'}"
        self.root = tmp_path / "datasets"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "server.log"
        config = DatabaseConfig(url=self.url)
        self.engine = open_engine(config)
        upgrade(self.engine, config)
        self.inbox = SampleInbox(DatasetIndex(self.engine, self.root))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.cloud.samples_server", self.url,
                 str(self.root), str(self.port)],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wait_for(self._up, 120.0, "the upload server", interval_s=0.2)

    def _up(self) -> bool:
        try:
            return httpx.get(f"{self.base}/health", timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.engine.dispose()

    def sample_ids(self, line: str) -> list[str]:
        return [e.sample_id for e in self.inbox.entries(SITE, line, state="all")]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """One server for the module (each test uploads as its own line)."""
    c = Cloud(tmp_path_factory.mktemp("cloud"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def make_uploads(store: Store, cfg: UploadsConfig, tmp_path: Path, line: str) -> Uploads:
    uploads = Uploads(cfg, store, site=SITE, line=line, spool_dir=tmp_path / "spool",
                      thresholds=lambda: {c: 0.5 for c in CLASSES},
                      alarms=AlarmBook(store))
    uploads.start()
    return uploads


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_uploads_through_a_killed_cloud_and_a_restarted_appliance_exactly_once(
        store: Store, cloud: Cloud, tmp_path: Path) -> None:
    (tmp_path / "upload.token").write_text(cloud.inbox.issue_token(SITE, "restart") + "\n")
    cfg = uploads_config(tmp_path, cloud.base)
    first = make_uploads(store, cfg, tmp_path, "restart")
    try:
        _outage(first, cloud)
    finally:
        first.stop()  # the appliance restarts too; the queue stays in the store
    waiting = UploadQueue(store, tmp_path / "spool", max_items=10, max_bytes=10**6).depth()[0]
    assert 0 < waiting <= 26
    cloud.start()
    second = make_uploads(store, cfg, tmp_path, "restart")
    try:
        assert second.wait_idle(120.0), second.stats()
    finally:
        second.stop()
    ids = cloud.sample_ids("restart")
    assert sorted(ids) == sorted(f"s1:{i}" for i in range(30))  # every sampled frame
    assert len(set(ids)) == len(ids) == 30  # exactly once
    assert list(Path(tmp_path / "spool").iterdir()) == []
    assert second.stats().sent == waiting


def _outage(first: Uploads, cloud: Cloud) -> None:
    for i in range(15):
        first.on_verdict(record(i, "fail" if i % 3 == 0 else "pass", n_defects=i % 3))
    wait_for(lambda: len(cloud.sample_ids("restart")) >= 4, 60.0, "the first uploads")
    cloud.kill()  # mid-upload: no orderly stop
    for i in range(15, 30):  # the line goes on while the cloud is away
        first.on_verdict(record(i))
    wait_for(lambda: first.stats().failed >= 3, 60.0, "tries against the dead cloud")
    wait_for(lambda: first.stats().sampled.get("random", 0) == 30, 60.0, "all sampled")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_wrong_token_keeps_the_samples_raises_an_alarm_and_retries_slowly(
        store: Store, cloud: Cloud, tmp_path: Path) -> None:
    token = cloud.inbox.issue_token(SITE, "token")
    (tmp_path / "upload.token").write_text(cloud.inbox.issue_token(SITE, "other") + "\n")
    cfg = uploads_config(tmp_path, cloud.base, auth_retry_s=1.0)
    uploads = make_uploads(store, cfg, tmp_path, "token")
    alarms = AlarmBook(store)
    try:
        started = time.monotonic()
        for i in range(3):
            uploads.on_verdict(record(i))
        wait_for(lambda: any(a.code == AUTH_ALARM for a in alarms.active()), 30.0,
                 "the upload_auth alarm")
        wait_for(lambda: uploads.stats().failed >= 2, 30.0, "a second try")
        elapsed = time.monotonic() - started
        assert uploads.stats().failed <= 2 + elapsed / cfg.auth_retry_s  # no tight loop
        assert uploads.stats().unauthorized and cloud.sample_ids("token") == []
        assert "HTTP 403" in (uploads.stats().last_error or "")  # another line's token
        (tmp_path / "upload.token").write_text("not-a-token\n")
        wait_for(lambda: "HTTP 401" in (uploads.stats().last_error or ""), 30.0, "a 401")
        assert uploads.queue.depth()[0] == 3  # kept
        (tmp_path / "upload.token").write_text(token + "\n")  # fixed without a restart
        assert uploads.wait_idle(30.0)
        wait_for(lambda: not any(a.code == AUTH_ALARM for a in alarms.active()), 10.0,
                 "the alarm to clear")
        assert sorted(cloud.sample_ids("token")) == ["s1:0", "s1:1", "s1:2"]
    finally:
        uploads.stop()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_operator_labelled_frames_become_a_dataset_version(
        store: Store, cloud: Cloud, tmp_path: Path) -> None:
    """Labels from the panel (LabelBook): the frame goes up with its labels, outside the
    budget (zero here), and `accept` turns it into the operator's boxes."""
    (tmp_path / "upload.token").write_text(cloud.inbox.issue_token(SITE, "labels") + "\n")
    for i in range(2):
        store.submit(dataclasses.replace(rec(i, "fail", n_defects=2, image=noisy(i)),
                                         model_version="demo:3"))
    store.flush()
    book = LabelBook(store, CLASSES)
    book.add("s1:0", "confirm", "ana", defect_index=0)      # scratch (0, 5, 8, 9)
    book.add("s1:0", "reject", "ana", defect_index=1)       # pit: a false positive
    book.add("s1:0", "missed", "ana", class_name="crack", box_xyxy=(20, 10, 40, 30))
    cfg = uploads_config(tmp_path, cloud.base, budget_per_hour=0, operator_labels=True,
                         operator_settle_s=0.0)
    uploads = make_uploads(store, cfg, tmp_path, "labels")
    try:
        uploads.on_verdict(record(5))  # no budget: not sampled
        wait_for(lambda: cloud.sample_ids("labels") == ["s1:0.op3"], 30.0, "the labelled frame")
        assert uploads.wait_idle(30.0)
        assert uploads.queue.mark("operator_label_id") == 3
    finally:
        uploads.stop()
    [entry] = cloud.inbox.entries(SITE, "labels")
    assert (entry.reason, entry.labelled, entry.labels, entry.predictions) == \
        ("operator", True, 3, 2)
    result = cloud.inbox.accept(SITE, "labels", "parts", classes=list(CLASSES))
    assert result.accepted == 1
    [item] = cloud.inbox.index.items(result.version.ref)
    boxes = [CLASSES[int(row.split()[0])] for row in item.labels.splitlines()]
    assert sorted(boxes) == ["crack", "scratch"]
