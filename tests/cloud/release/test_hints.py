"""`cmd/update` and `cmd/rollback` hints through a real mosquitto."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.release.errors import ReleaseError
from cloud.rollout.hints import MqttHinter
from protocol import decode
from protocol.commands import RollbackCommand, UpdateCommand
from protocol.mqtt_config import BrokerConfig
from tests.mqtt_broker import MqttProbe, free_port, requires_mosquitto, start_broker


@pytest.mark.mqtt
@requires_mosquitto
def test_hints_reach_the_line(tmp_path: Path) -> None:
    broker = start_broker(tmp_path)
    probe = MqttProbe(broker.port, "line.plant1.line-1")
    hinter = MqttHinter(BrokerConfig(host="127.0.0.1", port=broker.port), by="rollout")
    try:
        assert not probe.connect().is_failure
        probe.subscribe("lineguard/plant1/line-1/cmd/#")
        hinter.update("plant1", "line-1", "demo", 2, "rollout ro-1 canary")
        hinter.rollback("plant1", "line-1", 1, "rollout ro-1 halted")
        got = [probe.get(10.0) for _ in range(2)]
        messages = [decode(m.topic, m.payload) for m in got if m is not None and m.topic]
        assert isinstance(messages[0], UpdateCommand)
        assert (messages[0].target_name, messages[0].target_version) == ("demo", 2)
        assert isinstance(messages[1], RollbackCommand) and messages[1].target_version == 1
    finally:
        hinter.close()
        probe.close()
        broker.stop()


def test_no_broker_is_an_error_not_a_hang() -> None:
    hinter = MqttHinter(BrokerConfig(host="127.0.0.1", port=free_port()), by="rollout",
                        timeout_s=0.5)
    try:
        with pytest.raises(ReleaseError, match="not connected"):
            hinter.update("plant1", "line-1", "demo", 2, "x")
    finally:
        hinter.close()
