"""Helpers for the telemetry tests: a migrated database, records, and a collector
stand-in (the shared MQTT client of protocol/, recording what arrives, by msg_id)."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from appliance.records import DefectRecord, InspectionRecord
from appliance.telemetry import TelemetryConfig
from protocol import Message, ProtocolError, decode, fleet_filter
from protocol.backoff import BackoffConfig
from protocol.mqtt_client import ClientOptions, Inbound, MqttHandler, Reason, paho_client
from protocol.mqtt_config import BrokerConfig

# Not imported from tests.mqtt_broker: the child process (telemetry_child.py) imports
# this module, and pytest (which tests.mqtt_broker imports) would double its start time.
HOST = "127.0.0.1"
SITE, LINE = "plant1", "line-7"


def migrated_db(directory: Path) -> Path:
    """A fresh appliance database at the latest schema (the store's migrations)."""
    from appliance.store.schema.migrations import migrate
    from appliance.store.store import open_writer_db

    path = directory / "lineguard.db"
    db = open_writer_db(path)
    try:
        migrate(db, path)
    finally:
        db.close()
    return path


def wait_for(predicate: Callable[[], object], timeout_s: float) -> bool:
    """Poll `predicate` every 50 ms until it is truthy (True) or `timeout_s` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


_BROKER_KEYS = frozenset(BrokerConfig.model_fields)


def telemetry_cfg(port: int, **overrides: Any) -> TelemetryConfig:
    """A config for a test broker on 127.0.0.1: fast reconnects and windows. Overrides
    named like a broker setting (`username`, `tls`, `client_id`, ...) go to `broker`."""
    broker: dict[str, Any] = {
        "host": HOST,
        "port": port,
        "reconnect": {"initial_s": 1, "max_s": 2},
    }
    base: dict[str, Any] = {
        "metrics_interval_s": 1.0,
        "status_poll_s": 0.2,
        "backlog_rate_per_s": 2000.0,
        # above the test collectors' reconnect delay (1-2 s), below the tests' waits
        "reconnect_settle_s": 3.0,
        "stop_grace_s": 2.0,
    }
    for key, value in overrides.items():
        (broker if key in _BROKER_KEYS else base)[key] = value
    return TelemetryConfig.model_validate({**base, "broker": broker})


def record(i: int, verdict: str = "fail", station: str = "top", now: float | None = None,
           with_image: bool = False) -> InspectionRecord:
    """Frame `station:i`; a `fail` has one scratch defect."""
    t = time.time() if now is None else now
    defects = (DefectRecord(5, "scratches", 0.91, (10.0, 20.0, 50.0, 60.0)),) \
        if verdict == "fail" else ()
    return InspectionRecord(
        frame_id=f"{station}:{i}", station=station, part_id=f"P-{i}", captured_at=t - 0.02,
        judged_at=t, verdict=verdict,  # type: ignore[arg-type]
        reason="deadline" if verdict == "uninspected" else None,
        model_version="neu-det-yolo11n:7", preprocess_hash="abc",
        latency_ms={"infer": 4.0 + (i % 10), "total": 15.0 + (i % 20)}
        if verdict != "uninspected" else {"total": 250.0},
        defects=defects,
        image_bgr=np.zeros((48, 64, 3), np.uint8) if with_image else None,
    )


class Collector(MqttHandler):
    """The cloud collector's stand-in: a persistent MQTT 5 session (survives a broker
    restart) subscribed once to `lineguard/+/+/#`; every message is decoded with the
    protocol and recorded. Thread-safe; every wait is bounded."""

    def __init__(self, port: int, client_id: str = "collector") -> None:
        self.port = port
        self.lock = threading.Condition()
        self.messages: list[tuple[str, Message]] = []
        self.arrived_at: list[float] = []  # time.monotonic() of each of `messages`
        self.seen: Counter[str] = Counter()  # msg_id -> times received
        self.by_kind: dict[str, list[Message]] = defaultdict(list)
        self.errors: list[str] = []
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        # clean_start False from the first connect: mosquitto 2.0 does not keep (through a
        # restart) the session of a client that ever connected with clean_start True
        self.client = paho_client(
            BrokerConfig(host=HOST, port=port, reconnect=BackoffConfig(initial_s=1, max_s=1)),
            ClientOptions(client_id=client_id, clean_start=False, session_expiry_s=600),
            self,
        )

    def on_connect(self, session_present: bool) -> None:
        if session_present:  # a resumed session keeps its subscription
            self.subscribed.set()
        else:
            self.client.subscribe([fleet_filter()], 1)
        self.connected.set()

    def on_subscribe_ack(self, mid: int, reasons: Sequence[Reason]) -> None:
        if not any(r.is_failure for r in reasons):
            self.subscribed.set()

    def on_disconnect(self, reason: Reason) -> None:
        self.connected.clear()

    def on_message(self, message: Inbound) -> None:
        topic = message.topic or "<not UTF-8>"
        try:
            decoded = decode(topic, message.payload)
        except ProtocolError as e:
            with self.lock:
                self.errors.append(f"{topic}: {e}")
            return
        with self.lock:
            self.messages.append((topic, decoded))
            self.arrived_at.append(time.monotonic())
            self.seen[decoded.msg_id] += 1
            if self.seen[decoded.msg_id] == 1:
                self.by_kind[decoded.KIND.value].append(decoded)
            self.lock.notify_all()

    def connect(self, timeout_s: float = 10.0) -> None:
        """Connect and wait until the subscription is in place (SUBACK, or a resumed
        session that keeps it). Raises TimeoutError."""
        self.client.start()
        if not self.subscribed.wait(timeout_s):
            raise TimeoutError(f"collector not subscribed on {HOST}:{self.port}")

    def wait_until(self, predicate: Callable[[Collector], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(min(left, 0.2))
        return True

    def kind(self, kind: str) -> list[Any]:
        """First arrivals of `kind` (`events/defect`, `model`, `status`, `metrics`)."""
        with self.lock:
            return list(self.by_kind.get(kind, []))

    def frame_ids(self) -> Counter[str]:
        """How many distinct messages arrived per frame id (1 each, if none was sent
        under two msg_ids)."""
        return Counter(m.frame_id for m in self.kind("events/defect"))

    def duplicates(self) -> int:
        """Messages received more than once (same msg_id)."""
        with self.lock:
            return sum(n - 1 for n in self.seen.values())

    def close(self) -> None:
        self.client.stop()
