"""The collector against a mosquitto that wants passwords and applies an ACL."""

from __future__ import annotations

import gc
import shutil
import subprocess
import threading

import pytest
from pydantic import SecretStr

from cloud.collector import Collector
from cloud.config import BrokerConfig, CollectorConfig
from cloud.db import DatabaseConfig
from cloud.fleet import FleetStore
from protocol.backoff import BackoffConfig
from protocol.mqtt_client import Reason
from tests.cloud import fleet_helpers as h
from tests.mqtt_broker import MqttProbe, requires_mosquitto, start_broker

pytestmark = [
    pytest.mark.mqtt, requires_mosquitto, pytest.mark.timeout(300),
    pytest.mark.skipif(shutil.which("mosquitto_passwd") is None,
                       reason="mosquitto_passwd is not installed"),
]

ACCOUNTS = {"collector": "collector-secret-1", "line.plant1.line-1": "line-secret-1"}
ACL = """user collector
topic read lineguard/#

user line.plant1.line-1
topic write lineguard/plant1/line-1/#
"""


@pytest.fixture
def secured(tmp_path):
    passwd = tmp_path / "passwd"
    passwd.touch()
    for user, password in ACCOUNTS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True,
                       capture_output=True, timeout=30)
    acl = tmp_path / "acl"
    acl.write_text(ACL, "utf-8")
    broker = start_broker(
        tmp_path, f"{h.BROKER_CONF}allow_anonymous false\npassword_file {passwd}\n"
                  f"acl_file {acl}\n")
    # SQLite only: this is about the broker's accounts, not the database (test time).
    store = FleetStore(DatabaseConfig(url=h.sqlite_url(tmp_path / "fleet.db")))
    try:
        yield broker, store, tmp_path
    finally:
        store.close()
        broker.stop()
        # No client socket may be left unclosed (paho used to keep the one the broker
        # refused the wrong password on): collect here, so that a leak fails this test
        # (an unraisable ResourceWarning) rather than whichever test collects next.
        gc.collect()


def config(port: int, user: str, password_file=None) -> CollectorConfig:
    return CollectorConfig(
        group="auth",
        broker=BrokerConfig(port=port, client_id=f"c-{user}", username=user,
                            password_file=password_file,
                            reconnect=BackoffConfig(initial_s=1, max_s=2)),
        log_interval_s=0, stop_timeout_s=5,
    )


def test_collector_logs_in_with_its_password_file(secured):
    broker, store, tmp = secured
    secret = tmp / "collector.secret"
    secret.write_text(ACCOUNTS["collector"] + "\n", "utf-8")
    cfg = config(broker.port, "collector", password_file=secret)
    collector = Collector(cfg, store, password=cfg.broker.secret())
    collector.start()
    line = MqttProbe(broker.port, "line-1", "line.plant1.line-1", ACCOUNTS["line.plant1.line-1"])
    try:
        assert collector.wait_subscribed(60)
        assert not line.connect().is_failure
        message = h.metrics()
        line.publish(*h.wire(message))
        h.wait_for(lambda: message.msg_id in h.stored_ids(store.url), 60, "stored")
    finally:
        line.close()
        collector.stop()


def test_a_wrong_password_is_refused_and_retried_not_taken_for_success(secured, caplog):
    broker, store, _ = secured
    collector = Collector(config(broker.port, "collector"), store,
                          password=SecretStr("wrong-password"))
    collector.start()
    try:
        h.wait_for(lambda: "refused the collector" in caplog.text, 60, "a logged refusal")
        assert not collector.stats().connected
        assert not collector.wait_subscribed(0.5)
    finally:
        collector.stop()


def test_a_refused_subscription_stops_the_collector_with_status_2(secured):
    """mosquitto's acl_file grants every subscription (it filters at delivery), so the
    SUBACK a stricter broker sends (0x87, not authorized) is fed in as paho would."""
    broker, store, _ = secured
    collector = Collector(config(broker.port, "collector"), store,
                          password=SecretStr(ACCOUNTS["collector"]))
    collector.session.on_subscribe_ack(1, [Reason(0x87, "Not authorized", True)])
    assert collector.run(threading.Event()) == 2
    assert collector.session.failure is not None
    assert "ACL" in collector.session.failure
