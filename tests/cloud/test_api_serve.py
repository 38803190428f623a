"""`lineguard cloud serve --config FILE` as a real process on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from tests.cloud import fleet_helpers as h
from tests.mqtt_broker import free_port

pytestmark = pytest.mark.timeout(300)

TOKEN = "serve-test-token-0123456789"


def write_config(tmp_path, database_url: str, port: int, *more: str):
    """A cloud.yaml serving the API on `port` (its token in a file), `more` lines added."""
    token_file = tmp_path / "api.token"
    token_file.write_text(TOKEN + "\n", "utf-8")
    config = tmp_path / "cloud.yaml"
    config.write_text("".join([
        f"database: {{url: '{database_url}'}}\n",
        f"registry: {{root: {tmp_path / 'registry'}}}\n",
        f"api: {{port: {port}, token_file: {token_file}}}\n",
        *(f"{line}\n" for line in more)]), "utf-8")
    return config


def test_serve_answers_health_and_checks_the_token(tmp_path, database_url):
    port = free_port()
    config = write_config(tmp_path, database_url, port)
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "lineguard", "cloud", "serve", "--config", str(config)],
        # the cloud database's default file lands in the working directory
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(h.REPO), "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/health", timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False

    try:
        h.wait_for(up, 120.0, "the API to answer /health", interval_s=0.2)
        assert httpx.get(f"{base}/lines", timeout=5.0).status_code == 401
        ok = httpx.get(f"{base}/lines", headers={"Authorization": f"Bearer {TOKEN}"},
                       timeout=5.0)
        assert ok.status_code == 200
        assert ok.json() == []
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        log.close()


def test_serve_opens_one_engine_for_every_component(tmp_path, monkeypatch):
    # fleet store, registry (and the retrain queue on its engine), release records,
    # dataset uploads and drift all get the one engine `cloud serve` opened
    import signal as signal_module

    import sqlalchemy
    import uvicorn

    import cloud.db.engine
    from cloud.cli import main as cloud_main

    engines: list[sqlalchemy.Engine] = []

    def counting(*args, **kwargs):
        engine = sqlalchemy.create_engine(*args, **kwargs)
        engines.append(engine)
        return engine

    served: list[object] = []
    monkeypatch.setattr(cloud.db.engine, "create_engine", counting)
    monkeypatch.setattr(uvicorn, "run", lambda app, **_: served.append(app))
    monkeypatch.setattr(signal_module, "signal", lambda *_: None)
    config = write_config(tmp_path, h.sqlite_url(tmp_path / "cloud.db"), free_port(),
                          f"release: {{repository_dir: {tmp_path / 'tuf'}}}",
                          f"datasets: {{root: {tmp_path / 'datasets'}}}")
    assert cloud_main(["serve", "--config", str(config)]) == 0
    assert len(served) == 1
    assert len(engines) == 1
