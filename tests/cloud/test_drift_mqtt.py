"""The drift path end to end through a real Mosquitto: a line's windows reach the drift
monitor, the alert is stored in the cloud database, published on the line's
`cmd/alert`, received by the line and shown as an alarm; retraining is asked once;
malformed drift payloads are refused (and quarantined by the collector)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from appliance.drift.alerts import AlertListener
from cloud.collector.validate import Delivery, classify
from cloud.db import DatabaseConfig, open_engine, upgrade
from cloud.drift.config import DriftBrokerConfig, DriftConfig
from cloud.drift.monitor import DriftMonitor
from cloud.drift.service import DriftService
from cloud.drift.store import DriftStore
from models.drift.reference import reference_from_signals
from protocol import decode, encode
from protocol.topics import command_filter, drift_topic
from tests.cloud.drift_helpers import frames, sketches
from tests.mqtt_broker import MqttProbe, requires_mosquitto, start_broker

pytestmark = [pytest.mark.mqtt, requires_mosquitto]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    cfg = DatabaseConfig(url=f"sqlite:///{tmp_path / 'cloud.db'}")
    engine = open_engine(cfg)
    upgrade(engine, cfg)
    yield engine
    engine.dispose()


def wait_for(check, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


def test_alert_reaches_the_store_and_the_line(tmp_path: Path, engine: Engine) -> None:
    broker = start_broker(tmp_path)
    retrains: list[tuple[str, str]] = []
    service = None
    line = MqttProbe(broker.port, "line.plant1.line-3")
    try:
        cfg = DriftConfig(broker=DriftBrokerConfig(port=broker.port),
                          bootstrap_replicates=100, mmd_permutations=500)
        ref = reference_from_signals(frames(800, seed=1), "bundle")
        service = DriftService(cfg, lambda publish: DriftMonitor(
            engine, cfg, references=lambda model: ref, publish=publish,
            request_retrain=lambda ln, why: retrains.append((ln, why))))
        service.start()
        assert service.subscribed.wait(10)
        assert not line.connect().is_failure
        line.subscribe(command_filter("plant1", "line-3"))
        alarms: list[tuple[str, str | None]] = []
        listener = AlertListener(lambda code, message, station=None, severity="warning":
                                 alarms.append((code, station)), site="plant1", line="line-3")
        # A malformed and an out-of-range window first: refused, never processed.
        topic = drift_topic("plant1", "line-3")
        good = sketches(frames(40, seed=2), window=20)[0]
        bad = json.loads(encode(good))
        bad["image"]["sums_sq"][0] = -1.0
        assert line.publish(topic, json.dumps(bad).encode()) is not None
        assert line.publish(topic, b'{"schema": "lineguard.drift/2", "msg_id": 5}') is not None
        # Then a drifting line: one alert, however long the drift lasts.
        x = frames(600, seed=3, shift={"roi.luma": 3.0, "bg.log_std": -3.0})
        for m in sketches(x, window=20, first_seq=100):
            assert not line.publish(topic, encode(m)).is_failure
        wait_for(lambda: service.counts["processed"] + service.counts["invalid"] >= 32)
        store = DriftStore(engine)
        wait_for(lambda: len(store.alerts("plant1", "line-3")) == 1)
        stored = store.alerts("plant1", "line-3")[0]
        assert {n for n, _ in stored.channels[:2]} == {"roi.luma", "bg.log_std"}
        inbound = line.get(20)
        assert inbound is not None and inbound.topic == "lineguard/plant1/line-3/cmd/alert"
        command = decode(inbound.topic, inbound.payload)
        listener(command)
        assert alarms == [("drift", "cam")]
        wait_for(lambda: store.alerts()[0].published and store.alerts()[0].retrain_requested)
        assert len(retrains) == 1 and retrains[0][0] == "plant1/line-3"
        assert service.counts["invalid"] == 2
    finally:
        line.close()
        if service is not None:
            service.stop()
        broker.stop()


def test_malformed_drift_payloads_are_quarantined_by_the_collector() -> None:
    good = sketches(frames(40, seed=4), window=20)[0]
    base = json.loads(encode(good))
    topic = drift_topic("plant1", "line-3")

    def variant(path: tuple[object, ...], value: object) -> bytes:
        doc = json.loads(json.dumps(base))
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return json.dumps(doc).encode()

    payloads = [
        variant(("image", "sums_sq", 0), -1.0),                 # negative sum of squares
        variant(("image", "sums", 0), 1e13),                   # out of range
        variant(("frame_count",), 10_000),                     # more than the frame ids
        variant(("last_frame_id",), 0),                        # range reversed
        variant(("image", "names"), ["a"]),                    # shapes disagree
        variant(("image", "samples"), [[0.0] * 31]),           # a sample of another width
        variant(("image", "sums", 1), 1e3),                    # sum^2 > n * sum_sq
        b'{"schema": "lineguard.drift/2"}',
    ]
    received, rejected = classify(
        [Delivery(topic, p, i, 1, 0, 0) for i, p in enumerate(payloads)])
    assert received == [] and len(rejected) == len(payloads)
    assert {r.reason for r in rejected} <= {"malformed_payload", "schema_mismatch",
                                            "invalid_payload"}
    ok, _ = classify([Delivery(topic, encode(good), 99, 1, 0, 0)])
    assert len(ok) == 1
