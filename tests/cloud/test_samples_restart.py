"""A line uploading through a broken network: the server is killed mid-upload and
restarted; a real HTTP client retries with the same sample ids. Every sample ends in the
inbox exactly once (both database back ends). And `lineguard cloud serve` mounts the
endpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from cloud.cli import main as cloud_main
from cloud.datasets.inbox import SampleInbox
from cloud.datasets.index import DatasetIndex
from cloud.db import DatabaseConfig, open_engine, upgrade
from tests.cloud import fleet_helpers as h
from tests.cloud.dataset_helpers import meta, multipart, png_bytes
from tests.mqtt_broker import free_port

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

N_SAMPLES = 30


def _start(url: str, root: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.cloud.samples_server", url, str(root), str(port)],
            cwd=h.REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=2.0).status_code == 200
    except httpx.TransportError:
        return False


class Uploader(threading.Thread):
    """Uploads samples in order, each until the server answers 200 or 201, retrying
    transport errors and 5xx with a short bounded backoff (what the appliance does)."""

    def __init__(self, base: str, token: str, ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.base, self.token, self.ids = base, token, ids
        self.answers: dict[str, list[int]] = {i: [] for i in ids}
        self.failures = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + 200.0
            with httpx.Client(timeout=5.0) as client:
                for n, sample_id in enumerate(self.ids):
                    delay = 0.05
                    while True:
                        assert time.monotonic() < deadline, "uploads did not finish"
                        try:
                            answer = client.post(
                                f"{self.base}/lines/plant1/line1/samples",
                                headers={"Authorization": f"Bearer {self.token}"},
                                **multipart(meta(sample_id), png_bytes(1000 + n)))
                        except httpx.TransportError:
                            self.failures += 1
                        else:
                            self.answers[sample_id].append(answer.status_code)
                            if answer.status_code in (200, 201):
                                break
                            assert answer.status_code >= 500, answer.text
                        time.sleep(delay)
                        delay = min(delay * 2, 0.5)
        except BaseException as e:  # handed to the test thread
            self.error = e


def test_uploads_survive_a_killed_server_exactly_once(database_url, tmp_path):
    config = DatabaseConfig(url=database_url)
    engine = open_engine(config)
    upgrade(engine, config)
    inbox = SampleInbox(DatasetIndex(engine, tmp_path / "datasets"))
    token = inbox.issue_token("plant1", "line1")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    server = _start(database_url, tmp_path / "datasets", port, log)
    ids = [f"line1-{n:04d}" for n in range(N_SAMPLES)]
    uploader = Uploader(base, token, ids)
    try:
        h.wait_for(lambda: _up(base), 120.0, "the upload server", interval_s=0.2)
        uploader.start()
        h.wait_for(lambda: len(inbox.entries("plant1", "line1")) >= N_SAMPLES // 3, 120.0,
                   "a third of the samples")
        server.send_signal(signal.SIGKILL)  # mid-upload: no orderly stop
        server.wait(timeout=30)
        h.wait_for(lambda: uploader.failures > 0 or not uploader.is_alive(), 60.0,
                   "the uploader to notice the outage")
        server = _start(database_url, tmp_path / "datasets", port, log)
        uploader.join(timeout=200.0)
        assert not uploader.is_alive()
        assert uploader.error is None, uploader.error
        assert uploader.failures > 0
        # responses lost in the outage: the line sends the first third again
        with httpx.Client(timeout=5.0) as client:
            for n, sample_id in enumerate(ids[:10]):
                again = client.post(f"{base}/lines/plant1/line1/samples",
                                    headers={"Authorization": f"Bearer {token}"},
                                    **multipart(meta(sample_id), png_bytes(1000 + n)))
                assert again.status_code == 200 and again.json()["status"] == "duplicate"
        entries = inbox.entries("plant1", "line1")
        assert sorted(e.sample_id for e in entries) == ids
        assert len({e.sample_id for e in entries}) == N_SAMPLES
        assert len(list(inbox.index.objects.all_objects())) == N_SAMPLES
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)
        engine.dispose()


def test_lineguard_cloud_serve_mounts_the_upload_endpoint(tmp_path, monkeypatch, capsys):
    """`lineguard cloud serve` with the default database (an SQLite file in its working
    directory) and `datasets.root`; a token made by `lineguard cloud line token`."""
    port = free_port()
    token_file = tmp_path / "api.token"
    token_file.write_text("fleet-api-token-0123456789\n", "utf-8")
    config = tmp_path / "cloud.yaml"
    config.write_text(
        f"api: {{port: {port}, token_file: {token_file}}}\n"
        f"datasets: {{root: {tmp_path / 'datasets'}}}\n", "utf-8")
    env = {**os.environ, "PYTHONPATH": str(h.REPO), "PYTHONUNBUFFERED": "1"}
    monkeypatch.chdir(tmp_path)  # the default database file lands here
    assert cloud_main(["line", "token", "plant1/line1", "--config", str(config)]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert len(token) >= 40
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "lineguard", "cloud", "serve", "--config", str(config)],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        h.wait_for(lambda: _up(base), 120.0, "the API to answer /health", interval_s=0.2)
        url = f"{base}/lines/plant1/line1/samples"
        body = multipart(meta("s-1"), png_bytes(1))
        fleet = httpx.post(url, headers={"Authorization": "Bearer fleet-api-token-0123456789"},
                           timeout=10.0, **body)
        assert fleet.status_code == 401  # the fleet API's token is not a line token
        ok = httpx.post(url, headers={"Authorization": f"Bearer {token}"}, timeout=10.0, **body)
        assert ok.status_code == 201, ok.text
        assert cloud_main(["dataset", "inbox", "plant1/line1", "--config", str(config)]) == 0
        listed = capsys.readouterr().out
        assert "s-1" in listed and "random" in listed
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        log.close()
    assert (tmp_path / "lineguard-cloud.db").is_file()
