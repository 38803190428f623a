"""`cmd/update` and `cmd/rollback` hints over MQTT, through protocol's one client factory.

A hint only makes a line check its signed assignment sooner; nothing depends on it
arriving, so a publish that is not acknowledged in time is logged and dropped.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from cloud.release.errors import ReleaseError
from protocol.codec import prepare
from protocol.commands import RollbackCommand, UpdateCommand
from protocol.fields import new_msg_id
from protocol.mqtt_client import ClientOptions, MqttClient, MqttHandler, Reason, paho_client
from protocol.mqtt_config import BrokerConfig, BrokerSetupError

logger = logging.getLogger(__name__)


class _Handler(MqttHandler):
    def __init__(self) -> None:
        self.connected = threading.Event()

    def on_connect(self, session_present: bool) -> None:
        self.connected.set()

    def on_disconnect(self, reason: Reason) -> None:
        self.connected.clear()


class MqttHinter:
    """Publishes hints with QoS 1 and waits (bounded) for the broker's ack."""

    def __init__(self, broker: BrokerConfig, *, by: str, timeout_s: float = 5.0,
                 client_id_suffix: str = "") -> None:
        """`client_id_suffix` keeps a one-shot command from taking over the controller's
        MQTT session (the broker drops the older of two clients with one id)."""
        self._handler = _Handler()
        client_id = (broker.client_id or "lineguard-rollout-hints") + client_id_suffix
        try:
            options = ClientOptions(client_id=client_id)
            self._client: MqttClient = paho_client(broker, options, self._handler)
        except BrokerSetupError as e:
            raise ReleaseError(f"cannot set up the MQTT client for hints: {e}") from e
        self._by = by
        self._timeout_s = timeout_s
        self._client.start()

    def close(self) -> None:
        self._client.stop()

    def _send(self, message: UpdateCommand | RollbackCommand) -> None:
        if not self._handler.connected.wait(self._timeout_s):
            raise ReleaseError("not connected to the broker")
        if not self._client.publish_and_wait(prepare(message), self._timeout_s):
            raise ReleaseError(f"the broker did not acknowledge {message.schema_id}")

    def update(self, site: str, line: str, model: str, version: int, reason: str) -> None:
        self._send(UpdateCommand(
            msg_id=new_msg_id(), site=site, line=line, sent_at=datetime.now(UTC), target_name=model,
            target_version=version, reason=reason[:200], issued_by=self._by))

    def rollback(self, site: str, line: str, version: int, reason: str) -> None:
        self._send(RollbackCommand(
            msg_id=new_msg_id(), site=site, line=line, sent_at=datetime.now(UTC),
            target_version=version, reason=reason[:200], issued_by=self._by))
