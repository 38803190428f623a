"""Issue 8 item 11 in the fleet: `GET /lines/{site}/{line}/report` aggregates a line's
metrics messages per time bucket (parts, pass, fail, uninspected by reason, yield,
failed parts per class), over a real fleet store with FastAPI's TestClient; and the
appliance's metrics window counts failed parts per class (not boxes)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import timedelta

import pytest
from starlette.exceptions import StarletteDeprecationWarning

from appliance.records import DefectRecord, InspectionRecord, Verdict
from appliance.telemetry.metrics import VerdictWindow
from cloud.api import create_app
from cloud.db import DatabaseConfig
from cloud.fleet import FleetStore, Received, report, to_ms
from protocol import UninspectedReason, VerdictCounts, encode
from tests.cloud import fleet_helpers as h

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T = h.T0  # 09:00:00 UTC: whole minutes and hours are bucket edges
URL = "/lines/plant1/line-1/report"


def window(i: int, passed: int, failed: int, dropped: int, classes: dict[str, int],
           line: str = "line-1") -> object:
    return h.metrics(
        line=line, sent_at=T + timedelta(seconds=10 * i + 5),
        verdicts=VerdictCounts(passed=passed, failed=failed, uninspected=dropped),
        uninspected_by_reason={UninspectedReason.DROPPED: dropped} if dropped else {},
        defects_by_class={k: 3 * v for k, v in classes.items()},  # boxes: not what counts
        failed_parts_by_class=classes)


@pytest.fixture(scope="module")
def client(module_database_url: str) -> Iterator[TestClient]:
    store = FleetStore(DatabaseConfig(url=module_database_url))
    messages = [
        # 09:00:00-09:01:00: six windows
        *[window(i, passed=10, failed=1, dropped=i % 2, classes={"scratches": 1})
          for i in range(6)],
        # 09:01:00-09:02:00: three windows, one part failing with two classes
        *[window(i, passed=8, failed=2, dropped=0,
                 classes={"scratches": 1, "inclusion": 2}) for i in range(6, 9)],
        # 09:05: an older appliance's window, without failed_parts_by_class
        h.metrics(sent_at=T + timedelta(minutes=5, seconds=1),
                  verdicts=VerdictCounts(passed=5, failed=0, uninspected=0),
                  uninspected_by_reason={}, defects_by_class={}, failed_parts_by_class={}),
        window(0, passed=99, failed=99, dropped=0, classes={"x": 99}, line="line-2"),
    ]
    now_ms = to_ms(T + timedelta(hours=1))
    store.ingest([Received(m, encode(m), now_ms) for m in messages],  # type: ignore[arg-type]
                 collector_id="c1")
    with TestClient(create_app(store, TOKEN)) as c:
        yield c
    store.close()


def test_report_per_minute_bucket(client: TestClient) -> None:
    response = client.get(URL, params={"bucket_s": 60}, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["bucket_s"] == 60 and body["since"] is None
    first, second, third = body["buckets"]  # 09:02-09:05 had no metrics: no bucket
    assert first["start"].startswith("2025-03-14T09:00:00") and \
        first["end"].startswith("2025-03-14T09:01:00")
    assert (first["windows"], first["parts"], first["passed"], first["failed"],
            first["uninspected"]) == (6, 69, 60, 6, 3)
    assert first["uninspected_by_reason"] == {"dropped": 3}
    assert first["failed_parts_by_class"] == {"scratches": 6}  # parts, not the 18 boxes
    assert first["yield_pct"] == pytest.approx(100 * 60 / 69, abs=1e-3)
    assert second["failed_parts_by_class"] == {"inclusion": 6, "scratches": 3}
    assert (second["parts"], second["failed"]) == (30, 6)
    assert third["start"].startswith("2025-03-14T09:05:00")
    assert third["failed_parts_by_class"] == {} and third["yield_pct"] == 100.0
    total = body["total"]
    assert (total["windows"], total["parts"], total["passed"]) == (10, 104, 89)
    assert total["failed_parts_by_class"] == {"inclusion": 6, "scratches": 9}


def test_report_window_and_hour_bucket(client: TestClient) -> None:
    since = (T + timedelta(minutes=1)).isoformat()
    until = (T + timedelta(minutes=5)).isoformat()
    body = client.get(URL, params={"since": since, "until": until}, headers=AUTH).json()
    assert [b["start"][:19] for b in body["buckets"]] == ["2025-03-14T09:00:00"]  # the hour
    assert body["total"]["parts"] == 30 and body["total"]["windows"] == 3


def test_report_errors(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    assert client.get(URL).status_code == 401
    assert client.get("/lines/plant1/nope/report", headers=AUTH).status_code == 404
    assert client.get(URL, params={"bucket_s": 0}, headers=AUTH).status_code == 422
    backwards = {"since": (T + timedelta(hours=1)).isoformat(), "until": T.isoformat()}
    assert client.get(URL, params=backwards, headers=AUTH).status_code == 422
    monkeypatch.setattr(report, "MAX_BUCKETS", 2)
    response = client.get(URL, params={"bucket_s": 60}, headers=AUTH)
    assert response.status_code == 422 and "bucket_s" in response.text


def record(verdict: Verdict, classes: tuple[str, ...]) -> InspectionRecord:
    defects = tuple(DefectRecord(0, c, 0.8, (1.0, 1.0, 5.0, 5.0)) for c in classes)
    return InspectionRecord(frame_id="s:1", station="s", part_id=None, captured_at=1.0,
                            judged_at=1.1, verdict=verdict, reason=None, model_version="m:1",
                            preprocess_hash=None, latency_ms={}, defects=defects)


def test_the_metrics_window_counts_failed_parts_per_class() -> None:
    w = VerdictWindow(seed=0)
    w.add(record("fail", ("scratch", "scratch", "scratch", "dent")))
    w.add(record("fail", ("scratch",)))
    w.add(record("pass", ("scratch",)))  # below the fail threshold: not a failed part
    counts = w.take()
    assert counts.failed_parts_by_class == {"scratch": 2, "dent": 1}
    assert counts.defects_by_class == {"scratch": 5, "dent": 1}
