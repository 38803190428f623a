"""Helpers for the telemetry tests: a migrated database, records, and a collector
stand-in (a plain paho client that records what arrives, by msg_id)."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from appliance.records import DefectRecord, InspectionRecord
from appliance.telemetry import TelemetryConfig
from protocol import Message, ProtocolError, decode, fleet_filter

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


def telemetry_cfg(port: int, **overrides: Any) -> TelemetryConfig:
    """A config for a test broker on 127.0.0.1: fast reconnects and windows."""
    base: dict[str, Any] = {
        "host": HOST,
        "port": port,
        "reconnect_min_s": 1,
        "reconnect_max_s": 2,
        "metrics_interval_s": 1.0,
        "status_poll_s": 0.2,
        "backlog_rate_per_s": 2000.0,
        # above the test collectors' reconnect delay (1-2 s), below the tests' waits
        "reconnect_settle_s": 3.0,
        "stop_grace_s": 2.0,
    }
    base.update(overrides)
    return TelemetryConfig.model_validate(base)


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


class Collector:
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
        self.subscribed = threading.Event()  # the SUBACK came (or the session kept it)
        self.client = Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=MQTTProtocolVersion.MQTTv5)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self.subscribed.set()

    def _on_connect(self, client: Client, userdata: object, flags: ConnectFlags,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
        if reason_code.is_failure:
            return
        if not flags.session_present:  # a resumed session keeps its subscription
            client.subscribe(fleet_filter(), qos=1)
        else:
            self.subscribed.set()
        self.connected.set()

    def _on_disconnect(self, client: Client, userdata: object, flags: DisconnectFlags,
                       reason_code: ReasonCode, properties: Properties | None) -> None:
        self.connected.clear()

    def _on_message(self, client: Client, userdata: object, message: MQTTMessage) -> None:
        try:
            decoded = decode(message.topic, message.payload)
        except ProtocolError as e:
            with self.lock:
                self.errors.append(f"{message.topic}: {e}")
            return
        with self.lock:
            self.messages.append((message.topic, decoded))
            self.arrived_at.append(time.monotonic())
            self.seen[decoded.msg_id] += 1
            if self.seen[decoded.msg_id] == 1:
                self.by_kind[decoded.KIND.value].append(decoded)
            self.lock.notify_all()

    def connect(self, timeout_s: float = 10.0) -> None:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 600
        # clean_start False from the first connect: mosquitto 2.0 does not keep (through a
        # restart) the session of a client that ever connected with clean_start True
        self.client.connect(HOST, self.port, keepalive=30, clean_start=False,
                            properties=properties)
        self.client.loop_start()
        if not self.connected.wait(timeout_s):
            raise TimeoutError(f"collector did not connect to {HOST}:{self.port}")
        if not self.subscribed.wait(timeout_s):  # what is published before it is lost
            raise TimeoutError(f"collector did not subscribe on {HOST}:{self.port}")

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
        self.client.disconnect()
        self.client.loop_stop()
