"""The fleet API's release endpoints: the TUF repository served to a line's client
through uvicorn on 127.0.0.1, path safety, and the release views."""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import Engine

from cloud.api import create_app
from cloud.api.releases import ReleaseApi
from protocol.assignment import deploy_target_path
from tests.cloud.fleet_helpers import wait_for
from tests.cloud.registry.helpers import migrated_engine
from tests.cloud.release.rollout_helpers import LINES, World
from tests.cloud.release.tuf_helpers import Line, new_repository
from tests.mqtt_broker import free_port

with warnings.catch_warnings():
    from starlette.exceptions import StarletteDeprecationWarning

    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = migrated_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def world(engine: Engine, tmp_path: Path) -> Iterator[World]:
    repo, _ = new_repository(tmp_path)
    w = World(engine, repo, tmp_path)
    yield w
    w.fleet.close()


def test_release_views_and_tuf_files_over_http(world: World, tmp_path: Path) -> None:
    rollout = world.service().start("demo", 2, ["plant1/line-1"], by="alice")
    app = create_app(world.fleet, TOKEN, release=ReleaseApi(world.store, world.repo.root_dir))
    with TestClient(app) as client:
        assert client.get("/releases").status_code == 401
        releases = client.get("/releases", headers=AUTH).json()
        assert [(r["model"], r["version"]) for r in releases] == [("demo", 2), ("demo", 1)]
        lines = {f"{x['site']}/{x['line']}": x
                 for x in client.get("/releases/lines", headers=AUTH).json()}
        assert set(lines) == set(LINES)
        assert lines["plant1/line-1"]["assigned"]["version"] == 2
        assert lines["plant1/line-1"]["running_version"] == 1
        assert not lines["plant1/line-1"]["in_sync"] and lines["plant1/line-2"]["in_sync"]
        got = client.get(f"/rollouts/{rollout.rollout_id}", headers=AUTH).json()
        assert got["state"] == "active" and [s["kind"] for s in got["steps"]] == [
            "created", "assigned"]
        assert client.get("/rollouts", headers=AUTH).json()[0]["rollout_id"] == \
            rollout.rollout_id
        assert client.get("/rollouts/ro-none", headers=AUTH).status_code == 404
        kinds = [e["kind"] for e in client.get("/releases/events", headers=AUTH).json()]
        assert "rollout.assigned" in kinds and "released" in kinds
        # The TUF files need no token; nothing outside the repository is reachable.
        assert client.get("/tuf/metadata/1.root.json").status_code == 200
        assert client.get("/tuf/metadata/timestamp.json").json()["signed"]["_type"] == \
            "timestamp"
        (world.repo.root_dir / "secret.json").write_text("{}")
        for bad in ("/tuf/metadata/..%2Fsecret.json", "/tuf/targets/../secret.json",
                    "/tuf/targets/..%2F..%2Fsecret.json", "/tuf/targets/deploy/.hidden",
                    "/tuf/targets/deploy", "/tuf/metadata/nope.json",
                    "/tuf/targets/%2Fetc%2Fpasswd"):
            assert client.get(bad).status_code == 404, bad
    # A line's TUF client through the API served by uvicorn on 127.0.0.1.
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 20, "uvicorn to start")
        line = Line(f"http://127.0.0.1:{port}/tuf", tmp_path / "line",
                    world.repo.trusted_root())
        got = json.loads(line.fetch(deploy_target_path("plant1", "line-2")))
        assert (got["model"], got["version"]) == ("demo", 1)
        assert len(line.fetch(got["bundle_target"])) == got["bundle_length"]
    finally:
        server.should_exit = True
        thread.join(timeout=20)
