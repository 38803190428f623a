"""The reusable broker fixture helper (tests/mqtt_broker.py) itself."""

from __future__ import annotations

import pytest

from tests.mqtt_broker import BrokerError, MqttProbe, requires_mosquitto, start_broker

pytestmark = [pytest.mark.mqtt, requires_mosquitto]


def test_outage_and_restart_keep_the_port(tmp_path):
    broker = start_broker(tmp_path)
    try:
        port = broker.port
        probe = MqttProbe(port, "p1")
        assert not probe.connect().is_failure
        assert not probe.publish("t/retained", b"kept", retain=True).is_failure
        probe.close()
        broker.restart()  # orderly: the database is saved
        assert broker.port == port
        assert broker.running
        probe = MqttProbe(port, "p2")
        assert not probe.connect().is_failure
        probe.subscribe("t/#")
        message = probe.get(5.0)
        assert message is not None
        assert message.payload == b"kept"
        probe.close()
        broker.kill()  # abrupt outage
        assert not broker.running
        with pytest.raises((TimeoutError, OSError)):
            MqttProbe(port, "p3").connect(timeout_s=1.0)
        broker.start()
        assert broker.port == port
        probe = MqttProbe(port, "p4")
        assert not probe.connect().is_failure
        probe.close()
    finally:
        broker.stop()
    assert not broker.running
    broker.stop()  # idempotent


def test_a_bad_config_is_reported_with_the_log(tmp_path):
    with pytest.raises(BrokerError, match="no_such_option"):
        start_broker(tmp_path, "no_such_option 1")


def test_two_brokers_side_by_side(tmp_path):
    with start_broker(tmp_path) as first, start_broker(tmp_path) as second:
        assert first.port != second.port
        assert first.directory != second.directory
    assert not first.running
    assert not second.running
