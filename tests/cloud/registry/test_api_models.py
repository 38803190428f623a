"""`GET /models`, `GET /models/{name}/{version}` and `GET /retrain/requests` over a real
fleet store and registry."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.exceptions import StarletteDeprecationWarning

from cloud.api import create_app
from cloud.db import DatabaseConfig
from cloud.fleet import FleetStore, Received, to_ms
from cloud.registry import ModelRef, ModelRegistry, RegistryLineage
from cloud.retrain.requests import RetrainQueue
from protocol import encode
from tests.cloud import fleet_helpers as h
from tests.cloud.registry.helpers import DEMO_WEIGHTS, demo_copy, migrated_engine

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    store = FleetStore(DatabaseConfig(url=database_url))
    msgs = [h.status(sent_at=h.T0, model_version=7),
            h.status(line="line-2", sent_at=h.T0, model_version=8)]
    store.ingest([Received(m, encode(m), to_ms(h.T0)) for m in msgs], [], collector_id="c1")
    engine = migrated_engine(database_url)
    registry = ModelRegistry(engine, tmp_path / "registry")
    registry.add(demo_copy(tmp_path / "b7", name="det", version=7).root, weights=DEMO_WEIGHTS,
                 state="approved", source="import")
    registry.add(demo_copy(tmp_path / "b9", name="det", version=9).root, source="retrain",
                 lineage=RegistryLineage(parent=ModelRef("det", 7)))
    queue = RetrainQueue(engine, min_interval_h=0)
    done = queue.request_retrain("plant1/line-1", "drift alert 3: roi.hist7 moved")
    assert done is not None and queue.claim() is not None
    queue.set_plan(done.id, ModelRef("det", 7), "parts@2")
    queue.finish(done.id, ok=True, outcome="det@9 candidate", candidate=ModelRef("det", 9))
    queue.request_retrain("plant1/line-2", "scheduled retrain", source="schedule")
    try:
        with TestClient(create_app(store, TOKEN, registry=registry)) as c:
            yield c
    finally:
        store.close()
        engine.dispose()


def test_models_list_shows_state_lineage_and_lines(client: TestClient) -> None:
    body: list[dict[str, Any]] = client.get("/models", headers=AUTH).json()
    assert [(m["name"], m["version"], m["state"]) for m in body] == [
        ("det", 7, "approved"), ("det", 9, "candidate")]
    assert body[0]["runs_on"] == ["plant1/line-1"]
    assert body[1]["runs_on"] == [] and body[1]["parent"] == "det@7"
    assert client.get("/models?name=other", headers=AUTH).json() == []


def test_model_detail_and_errors(client: TestClient) -> None:
    detail = client.get("/models/det/9", headers=AUTH).json()
    assert detail["history"][0]["to_state"] == "candidate"
    assert detail["gate_reasons"] is None
    assert client.get("/models/det/3", headers=AUTH).status_code == 404
    assert client.get("/models/det/0", headers=AUTH).status_code == 422
    assert client.get("/models/../x/1", headers=AUTH).status_code == 404
    assert client.get("/models?name=a%20b", headers=AUTH).status_code == 422
    assert client.get("/models").status_code == 401
    assert client.get("/models/det/7", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_retrain_requests(client: TestClient) -> None:
    body: list[dict[str, Any]] = client.get("/retrain/requests", headers=AUTH).json()
    assert [(r["line"], r["source"], r["state"]) for r in body] == [
        ("plant1/line-2", "schedule", "queued"), ("plant1/line-1", "drift", "done")]
    done = body[1]
    assert (done["parent"], done["dataset"], done["candidate"]) == ("det@7", "parts@2", "det@9")
    assert done["started_at"] is not None and done["finished_at"] is not None
    one = client.get("/retrain/requests?line=plant1/line-1&limit=5", headers=AUTH).json()
    assert [r["id"] for r in one] == [done["id"]]
    assert client.get("/retrain/requests?line=line-1", headers=AUTH).status_code == 422
    assert client.get("/retrain/requests?limit=0", headers=AUTH).status_code == 422
    assert client.get("/retrain/requests").status_code == 401
