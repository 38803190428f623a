"""Telemetry against a real mosquitto on 127.0.0.1: live messages and their content,
status and model reports, MQTT 3.1.1, TLS with a client certificate and a password, a
refused login, the bounded outbox reporting its loss, and a broker that refuses
messages (ACL)."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.records import EventRecord
from appliance.store import Store
from appliance.telemetry import Gauges, PublisherStats, Telemetry, TelemetryConfig
from protocol import ModelRef, decode, status_topic
from tests.appliance.store_rig import open_store
from tests.appliance.telemetry_helpers import (
    LINE,
    SITE,
    Collector,
    record,
    telemetry_cfg,
    wait_for,
)
from tests.mqtt_broker import Broker, MqttProbe, free_port, requires_mosquitto, start_broker

pytestmark = [pytest.mark.mqtt, requires_mosquitto, pytest.mark.timeout(180)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """The appliance's store: its database holds the outbox, its writer writes it."""
    s = open_store(tmp_path)
    yield s
    s.stop()

MODEL = ModelRef(name="neu-det-yolo11n", version=7, label="2025-03-10 retrain")


class GaugeBox:
    """Gauges a test changes while telemetry reads them."""

    def __init__(self, gauges: Gauges) -> None:
        self.gauges = gauges

    def __call__(self) -> Gauges:
        return self.gauges


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = start_broker(tmp_path)
    yield b
    b.stop()


@pytest.fixture
def collector(broker: Broker) -> Iterator[Collector]:
    c = Collector(broker.port)
    c.connect()
    yield c
    c.close()


def test_live_messages_status_and_model(
    store: Store, broker: Broker, collector: Collector
) -> None:
    box = GaugeBox(Gauges(model=MODEL, engine_provider="CPUExecutionProvider",
                          sources={"top": "streaming"}, queue_depths={"batcher": 1}))
    events: list[EventRecord] = []
    telemetry = Telemetry(telemetry_cfg(broker.port), store, box,
                          site=SITE, line=LINE, record_event=events.append,
                          app_version="0.1.0")
    telemetry.start()
    try:
        assert collector.wait_until(lambda c: bool(c.kind("status")), 10)
        online = collector.kind("status")[0]
        assert (online.state, online.app_version, online.model) == ("online", "0.1.0", MODEL)
        assert online.sources == {"top": "streaming"}
        assert collector.wait_until(lambda c: bool(c.kind("model")), 10)
        assert collector.kind("model")[0].current == MODEL  # reported at start

        for i in range(5):
            telemetry.on_verdict(record(i, "fail", with_image=True))
        for i in range(10):
            telemetry.on_verdict(record(i, "pass", station="side"))
        assert collector.wait_until(lambda c: len(c.frame_ids()) == 5, 10)
        event = collector.kind("events/defect")[0]
        assert event.model == MODEL  # the label comes from the gauges' model
        assert event.image_size_wh == (64, 48) and event.part_id == "P-0"
        assert [d.class_name for d in event.defects] == ["scratches"]
        assert collector.wait_until(
            lambda c: sum(m.verdicts.passed for m in c.kind("metrics")) == 10, 10)
        metrics = [m for m in collector.kind("metrics") if m.verdicts.passed]
        assert metrics[0].engine_provider == "CPUExecutionProvider"
        assert metrics[0].latency_ms["end_to_end"].samples > 0  # the pipeline's `total`
        assert metrics[0].queue_depths["batcher"] == 1

        # a source is lost: a new status; a hot swap: a model report with the previous
        v8 = ModelRef(name="neu-det-yolo11n", version=8)
        box.gauges = Gauges(model=v8, sources={"top": "lost"}, alarms=("camera_lost",))
        assert collector.wait_until(
            lambda c: any(s.sources.get("top") == "lost" for s in c.kind("status")), 10)
        assert collector.wait_until(
            lambda c: any(m.current == v8 and m.previous == MODEL for m in c.kind("model")), 10)
    finally:
        telemetry.stop()
    last = collector.kind("status")
    assert collector.wait_until(lambda c: c.kind("status")[-1].state == "offline", 10)
    last = collector.kind("status")[-1]
    assert (last.state, last.reason) == ("offline", "shutdown")
    stats = telemetry.stats()
    assert stats is not None and stats.outbox_depth == 0 and stats.invalid == 0
    assert not collector.errors and collector.duplicates() == 0
    assert not events
    # the retained status is what a late monitor sees
    late = MqttProbe(broker.port, "late")
    late.connect()
    late.subscribe(status_topic(SITE, LINE))
    message = late.get(5.0)
    late.close()
    assert message is not None and message.retain
    assert decode(message.topic, message.payload).state == "offline"  # type: ignore[union-attr]


def test_mqtt_3_1_1(store: Store, broker: Broker, collector: Collector) -> None:
    telemetry = Telemetry(telemetry_cfg(broker.port, protocol="3.1.1"), store,
                          site=SITE, line=LINE)
    telemetry.start()
    try:
        for i in range(20):
            telemetry.on_verdict(record(i))
        assert collector.wait_until(lambda c: len(c.frame_ids()) == 20, 15)
    finally:
        telemetry.stop()
    stats = telemetry.stats()
    assert stats is not None and stats.outbox_depth == 0 and stats.protocol == "3.1.1"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_pki(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (EC P-256)."""
    directory.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=lineguard-test-ca", cwd=directory)
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n", "utf-8")
    for name in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=lineguard-{name}", cwd=directory)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                 *(["-extfile", "san.ext"] if name == "server" else []), cwd=directory)
    return {name: directory / name for name in
            ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Broker, dict[str, Path]]]:
    pki = make_pki(tmp_path / "pki")
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), LINE, "line-secret"],
                   check=True, capture_output=True, timeout=30)
    conf = "\n".join([
        f"cafile {pki['ca.pem']}",
        f"certfile {pki['server.pem']}",
        f"keyfile {pki['server.key']}",
        "require_certificate true",
        f"password_file {passwd}",
        "allow_anonymous false",
    ])
    b = start_broker(tmp_path, conf_extra=conf)
    yield b, pki
    b.stop()


def tls_cfg(port: int, pki: dict[str, Path], password: str) -> TelemetryConfig:
    return telemetry_cfg(port, username=LINE, password=password, tls={
        "ca_file": pki["ca.pem"], "cert_file": pki["client.pem"], "key_file": pki["client.key"],
    })


def test_tls_client_certificate_and_password(
    store: Store, tls_broker: tuple[Broker, dict[str, Path]]
) -> None:
    broker, pki = tls_broker
    telemetry = Telemetry(tls_cfg(broker.port, pki, "line-secret"), store,
                          site=SITE, line=LINE)
    telemetry.start()
    try:
        for i in range(10):
            telemetry.on_verdict(record(i))
        # the broker answered each message over TLS; with nobody subscribed ("no matching
        # subscribers") the rows stay in the outbox
        assert wait_for(lambda: (s := telemetry.stats()) is not None and s.unrouted >= 10
                        and s.outbox_depth >= 10, 15), telemetry.stats()
    finally:
        telemetry.stop()


def test_refused_login_keeps_messages_and_says_why(
    store: Store, tls_broker: tuple[Broker, dict[str, Path]]
) -> None:
    broker, pki = tls_broker
    telemetry = Telemetry(tls_cfg(broker.port, pki, "wrong"), store,
                          site=SITE, line=LINE)
    telemetry.start()
    try:
        for i in range(10):
            telemetry.on_verdict(record(i))
        def refused() -> bool:
            stats = telemetry.stats()
            return stats is not None and "refused" in (stats.connection_error or "")

        assert wait_for(refused, 15), telemetry.stats()
        assert wait_for(lambda: (s := telemetry.stats()) is not None and s.outbox_depth == 10,
                        10)
        stats = telemetry.stats()
        assert stats is not None and not stats.connected
        assert "wrong" not in repr(telemetry.cfg)
    finally:
        telemetry.stop(timeout_s=3.0)


def test_bounded_outbox_keeps_events_and_reports_the_loss(tmp_path: Path, store: Store) -> None:
    port = free_port()  # no broker yet
    events: list[EventRecord] = []
    lock = threading.Lock()

    def record_event(e: EventRecord) -> None:
        with lock:
            events.append(e)

    cfg = telemetry_cfg(port, metrics_interval_s=0.5, outbox_max_rows=10,
                        outbox_hard_max_rows=12)
    telemetry = Telemetry(cfg, store, site=SITE, line=LINE,
                          record_event=record_event)
    telemetry.start()
    broker: Broker | None = None
    collector: Collector | None = None
    try:
        def stats() -> PublisherStats:
            s = telemetry.stats()
            assert s is not None
            return s

        assert wait_for(lambda: stats().outbox_depth >= 3, 15)  # metrics pile up
        for i in range(15):
            telemetry.on_verdict(record(i))
        assert wait_for(lambda: stats().dropped.get("events/defect", 0) == 3, 10), stats()
        # more metrics windows: refused now, only events are left
        assert wait_for(lambda: stats().dropped.get("metrics", 0) >= 3, 10), stats()
        assert stats().outbox_depth == 12
        assert wait_for(lambda: any(e.kind == "telemetry_dropped" and e.severity == "alarm"
                                    for e in events), 5)
        broker = start_broker(tmp_path, port=port)
        collector = Collector(port)
        collector.connect()
        assert collector.wait_until(lambda c: len(c.frame_ids()) == 12, 20)
        # the first metrics message that got into the outbox reports every loss so far
        assert collector.wait_until(lambda c: any(
            m.outbox.dropped >= 6 for m in c.kind("metrics") if m.outbox), 10)
    finally:
        telemetry.stop()
        if collector is not None:
            collector.close()
        if broker is not None:
            broker.stop()
    final = telemetry.stats()
    assert final is not None
    reported = sum(m.outbox.dropped for m in collector.kind("metrics") if m.outbox)
    assert reported <= sum(final.dropped.values())
    assert set(collector.frame_ids()) == {f"top:{i}" for i in range(12)}


def test_messages_the_broker_refuses_stay_in_the_outbox(tmp_path: Path, store: Store) -> None:
    acl = tmp_path / "acl"
    acl.write_text(f"pattern write lineguard/{SITE}/%c/status\n", "utf-8")
    broker = start_broker(tmp_path, conf_extra=f"acl_file {acl}")
    cfg = telemetry_cfg(broker.port, client_id=LINE)
    telemetry = Telemetry(cfg, store, site=SITE, line=LINE)
    telemetry.start()
    try:
        for i in range(5):
            telemetry.on_verdict(record(i))
        assert wait_for(lambda: (s := telemetry.stats()) is not None and s.rejected >= 5, 15), \
            telemetry.stats()
        stats = telemetry.stats()
        assert stats is not None and stats.outbox_depth == 5 and stats.acknowledged == 0
        assert stats.last_error is not None and "refused" in stats.last_error
    finally:
        telemetry.stop(timeout_s=3.0)
        broker.stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_stop_that_could_not_say_offline_leaves_the_will(
    protocol: str, broker: Broker, collector: Collector
) -> None:
    from datetime import UTC, datetime

    from appliance.telemetry.connection import BrokerConnection
    from protocol import last_will, prepare

    up = threading.Event()
    connection = BrokerConnection(
        telemetry_cfg(broker.port, protocol=protocol), client_id=f"will-{protocol}",
        will=lambda: prepare(last_will(SITE, LINE, datetime.now(UTC))),
        first_message=lambda: None, on_up=up.set, on_down=lambda reason: None,
        on_ack=lambda mid, outcome, reason: None,
    )
    connection.start()
    try:
        assert up.wait(10)
    finally:
        connection.stop(publish_will=True)
    assert collector.wait_until(lambda c: bool(c.kind("status")), 10)
    will = collector.kind("status")[-1]
    assert (will.state, will.reason) == ("offline", "connection_lost")


class Mqtt311OnlyProxy:
    """A broker that speaks only MQTT 3.1.1, made from mosquitto: a TCP proxy on
    127.0.0.1 that answers an MQTT 5 CONNECT like an old broker (a 3.1.1 CONNACK with
    return code 1, unacceptable protocol version) and passes anything else through."""

    def __init__(self, upstream_port: int) -> None:
        import socket

        self.upstream_port = upstream_port
        self.refused_v5 = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._sockets: list[Any] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: Any) -> None:
        import socket

        self._sockets.append(client)
        client.settimeout(5.0)
        head = b""
        try:
            while len(head) < 12:  # fixed header, length, "MQTT", protocol level
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            n = 1
            while head[n] & 0x80:
                n += 1
            level = head[n + 1 + 2 + 4]
            if level == 5:
                self.refused_v5 += 1
                client.sendall(b"\x20\x02\x00\x01")
                client.close()
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            self._sockets.append(upstream)
            upstream.sendall(head)
            client.settimeout(None)
            upstream.settimeout(None)
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
            self._pump(client, upstream)
        except OSError:
            return

    def _pump(self, source: Any, sink: Any) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._server.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()


def test_auto_falls_back_to_mqtt_3_1_1_for_an_old_broker(
    store: Store, broker: Broker, collector: Collector
) -> None:
    proxy = Mqtt311OnlyProxy(broker.port)
    telemetry = Telemetry(telemetry_cfg(proxy.port, protocol="auto"), store,
                          site=SITE, line=LINE)
    telemetry.start()
    try:
        for i in range(5):
            telemetry.on_verdict(record(i))
        assert collector.wait_until(lambda c: len(c.frame_ids()) == 5, 20), telemetry.stats()
        stats = telemetry.stats()
        assert stats is not None and stats.protocol == "3.1.1"
        assert proxy.refused_v5 >= 1
    finally:
        telemetry.stop()
        proxy.close()


def test_backlog_drains_oldest_first_at_a_bounded_rate_beside_live_messages(
    tmp_path: Path, store: Store,
) -> None:
    n_backlog, rate_per_s = 200, 100.0
    cfg = telemetry_cfg(free_port(), metrics_interval_s=3600.0)
    offline = Telemetry(cfg, store, site=SITE, line=LINE)  # the broker is down
    offline.start()
    for i in range(n_backlog):
        offline.on_verdict(record(i))
    offline.stop(timeout_s=5.0)  # an orderly stop writes everything to the outbox
    stats = offline.stats()
    assert stats is not None and stats.outbox_depth == n_backlog + 1  # + the last metrics

    broker = start_broker(tmp_path)
    collector = Collector(broker.port)
    arrivals: list[tuple[int, str]] = []
    times: list[float] = []
    telemetry = Telemetry(
        telemetry_cfg(broker.port, metrics_interval_s=3600.0, backlog_rate_per_s=rate_per_s,
                      backlog_inflight_max=8),
        store, site=SITE, line=LINE,
    )
    try:
        collector.connect()
        telemetry.start()
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < 3.0:  # live parts while the backlog drains
            telemetry.on_verdict(record(i, station="side"))
            i += 1
            time.sleep(0.05)
        assert collector.wait_until(lambda c: len(c.frame_ids()) == n_backlog + i, 30)
        with collector.lock:
            arrivals = [(n, m.frame_id) for n, (_, m) in enumerate(collector.messages)
                        if m.KIND.value == "events/defect"]
            times = list(collector.arrived_at)
    finally:
        telemetry.stop()
        collector.close()
        broker.stop()
    backlog = [int(f.split(":")[1]) for _, f in arrivals if f.startswith("top:")]
    assert backlog == sorted(backlog) == list(range(n_backlog))  # oldest first
    last_backlog = max(n for n, f in arrivals if f.startswith("top:"))
    first_live = min(n for n, f in arrivals if f.startswith("side:"))
    assert first_live < last_backlog  # live messages did not wait for the backlog
    # the rate bound: 200 messages at 100/s (a bucket of 8) take at least 1.92 s
    first_backlog = min(n for n, f in arrivals if f.startswith("top:"))
    assert times[last_backlog] - times[first_backlog] >= 0.9 * (n_backlog - 8) / rate_per_s
    stats = telemetry.stats()
    assert stats is not None and stats.outbox_depth == 0 and collector.duplicates() == 0
