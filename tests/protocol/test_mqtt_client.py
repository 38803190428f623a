"""The shared MQTT plumbing (protocol/mqtt_config.py, protocol/mqtt_client.py): broker
settings with one spelling, the paho client, and handlers that can never end paho's
network thread."""

from __future__ import annotations

import threading
import time

import pytest
from pydantic import ValidationError

from protocol.mqtt_client import ClientOptions, Inbound, MqttHandler, paho_client
from protocol.mqtt_config import BrokerConfig, BrokerSetupError, TlsConfig, ssl_context
from tests.mqtt_broker import MqttProbe, requires_mosquitto, start_broker


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"port": 0}, "port"),
        ({"password": "x"}, "a password needs a username"),
        ({"password_file": "/x"}, "a password needs a username"),
        ({"username": "u", "password": "x", "password_file": "/x"}, "not both"),
        ({"tls": {"cert_file": "/c.pem"}}, "cert_file and key_file go together"),
        ({"client_id": "has space"}, "client_id"),
        ({"reconnect": {"initial_s": 5, "max_s": 1}}, "max_s"),
        ({"ca_path": "/old/spelling"}, "ca_path"),
        ({"tls": {"ca_path": "/old/spelling"}}, "ca_path"),
    ],
)
def test_bad_settings_are_named(settings: dict[str, object], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        BrokerConfig.model_validate(settings)


def test_defaults_and_secrets() -> None:
    cfg = BrokerConfig.model_validate({"username": "line-7", "password": "s3cret"})
    assert (cfg.host, cfg.port, cfg.keepalive_s, cfg.client_id) == ("127.0.0.1", 1883, 30, None)
    assert cfg.reconnect.initial_s <= cfg.reconnect.max_s
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg.model_dump())
    secret = cfg.secret()
    assert secret is not None and secret.get_secret_value() == "s3cret"
    assert BrokerConfig().secret() is None


def test_password_file_first_line(tmp_path) -> None:
    path = tmp_path / "mqtt.secret"
    path.write_text("  hunter2 \nsecond line\n", "utf-8")
    secret = BrokerConfig(username="u", password_file=path).secret()
    assert secret is not None and secret.get_secret_value() == "hunter2"
    path.write_text("\n", "utf-8")
    with pytest.raises(BrokerSetupError, match="is empty"):
        BrokerConfig(username="u", password_file=path).secret()
    with pytest.raises(BrokerSetupError, match="cannot read the password file"):
        BrokerConfig(username="u", password_file=tmp_path / "missing").secret()


def test_unusable_tls_files_are_a_setup_error(tmp_path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate", "utf-8")
    with pytest.raises(BrokerSetupError, match="cannot load certificates"):
        ssl_context(TlsConfig(ca_file=bad))
    with pytest.raises(BrokerSetupError):
        paho_client(BrokerConfig(tls=TlsConfig(ca_file=tmp_path / "missing.pem")),
                    ClientOptions(client_id="t"), MqttHandler())
    assert ssl_context(TlsConfig(check_hostname=False)).check_hostname is False


class _Exploding(MqttHandler):
    """Raises on every other message; records the rest."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.connected = threading.Event()

    def on_connect(self, session_present: bool) -> None:
        self.connected.set()

    def on_message(self, message: Inbound) -> None:
        if message.payload.startswith(b"boom"):
            raise ValueError("a bug in a handler")
        self.got.append(message.payload)


@pytest.mark.mqtt
@requires_mosquitto
def test_a_raising_handler_is_logged_and_counted_and_the_client_carries_on(
    tmp_path, caplog
) -> None:
    broker = start_broker(tmp_path)
    handler = _Exploding()
    client = paho_client(BrokerConfig(port=broker.port), ClientOptions(client_id="sub"),
                         handler)
    probe = MqttProbe(broker.port, "pub")
    try:
        client.start()
        assert handler.connected.wait(10)
        mid = client.subscribe(["t/#"], 1)
        assert mid is not None
        assert not probe.connect().is_failure
        deadline = time.monotonic() + 10
        # keep publishing until the subscription is surely in place
        while not handler.got and time.monotonic() < deadline:
            probe.publish("t/x", b"warm-up")
        for n in range(3):
            probe.publish("t/x", b"boom %d" % n)
            probe.publish("t/x", b"ok %d" % n)
        while len([g for g in handler.got if g.startswith(b"ok")]) < 3 \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [g for g in handler.got if g.startswith(b"ok")] == [b"ok 0", b"ok 1", b"ok 2"]
        assert client.callback_errors == 3
        assert client.connected
        assert "error in the MQTT message handler" in caplog.text
    finally:
        probe.close()
        client.stop()
        broker.stop()
    assert not client.connected
