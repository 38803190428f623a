"""The committed broker config and generated ACL, against a real mosquitto.

Each line's account may publish only its own topics and read only its own commands;
the collector reads everything; the release account only sends commands. Checks use a
sentinel: after something that must not arrive, the same client publishes something
that must, and the receiver's list up to the sentinel must not hold the forbidden one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from protocol import (
    MetricsMessage,
    Outgoing,
    StatusMessage,
    VerdictCounts,
    command_filter,
    decode,
    last_will,
    line_client_id,
    new_msg_id,
    prepare,
    shared_fleet_filter,
    update_command_topic,
)
from protocol.examples import example_messages
from protocol.mqtt_client import Reason
from tests.mqtt_broker import Broker, MqttProbe, requires_mosquitto, start_broker
from tests.protocol.deploy_scripts import DEPLOY_DIR, load

pytestmark = [pytest.mark.mqtt, requires_mosquitto]

SITE = "plant1"
LINES = [(SITE, "line-a"), (SITE, "line-b")]
T0 = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)
# Directives the test broker sets itself (base config of start_broker) or points at tmp.
_REPLACED = re.compile(r"^\s*(listener|persistence_location|password_file|acl_file|log_dest)\b")


@dataclass
class Fleet:
    broker: Broker
    passwords: dict[str, str]

    def probe(
        self, user: str | None, client_id: str, clean_start: bool = True, session_expiry_s: int = 0
    ) -> MqttProbe:
        return MqttProbe(
            self.broker.port,
            client_id,
            user,
            self.passwords.get(user or ""),
            clean_start=clean_start,
            session_expiry_s=session_expiry_s,
        )

    def connected(
        self, user: str, client_id: str, clean_start: bool = True, session_expiry_s: int = 0
    ) -> MqttProbe:
        probe = self.probe(user, client_id, clean_start, session_expiry_s)
        assert not probe.connect().is_failure, self.broker.log_text()[-2000:]
        return probe


def security_conf(passwd: Path, acl: Path) -> str:
    """The committed mosquitto.conf minus what the test broker sets, plus tmp paths."""
    text = (DEPLOY_DIR / "mosquitto.conf").read_text("utf-8")
    kept = [row for row in text.splitlines() if not _REPLACED.match(row)]
    return "\n".join([*kept, f"password_file {passwd}", f"acl_file {acl}"])


def _start_fleet(directory: Path) -> Fleet:
    make_acl, make_passwd = load("make_acl"), load("make_passwd")
    acl = directory / "acl"
    acl.write_text(make_acl.render_acl(LINES), "utf-8")
    names = make_passwd.accounts_in_acl(acl.read_text("utf-8"))
    passwords = make_passwd.ensure_credentials(directory / "credentials", names)
    make_passwd.write_password_file(directory / "passwd", passwords)
    broker = start_broker(directory, security_conf(directory / "passwd", acl))
    return Fleet(broker, passwords)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    started = _start_fleet(tmp_path_factory.mktemp("fleet"))
    try:
        yield started
    finally:
        started.broker.stop()


@pytest.fixture
def probes() -> Iterator[list[MqttProbe]]:
    """Probes appended here are closed after the test, whatever happens."""
    opened: list[MqttProbe] = []
    yield opened
    for probe in opened:
        probe.close()


def line_user(line: str) -> str:
    return f"line.{SITE}.{line}"


def _metrics(line: str) -> MetricsMessage:
    return MetricsMessage(
        msg_id=new_msg_id(),
        site=SITE,
        line=line,
        sent_at=T0,
        window_s=10.0,
        fps=1.0,
        verdicts=VerdictCounts(passed=1, failed=0, uninspected=0),
    )


def test_committed_config_is_secure_and_persistent():
    text = (DEPLOY_DIR / "mosquitto.conf").read_text("utf-8")
    active = {row.split()[0]: row.split()[1:] for row in text.splitlines() if row and row[0] != "#"}
    assert active["allow_anonymous"] == ["false"]
    assert active["persistence"] == ["true"]
    assert "password_file" in active
    assert "acl_file" in active
    assert "#listener 8883" in text  # the TLS stanza, commented


def test_committed_config_binds_client_ids_to_accounts():
    """Issue 9, defect 4: without this a line could take over another line's session."""
    text = (DEPLOY_DIR / "mosquitto.conf").read_text("utf-8")
    active = [row.split() for row in text.splitlines() if row and row[0] != "#"]
    listener = next(i for i, row in enumerate(active) if row[0] == "listener")
    # A listener option: it must follow the listener it applies to.
    assert ["use_username_as_clientid", "true"] in active[listener:]
    make_acl = load("make_acl")
    assert make_acl.line_username(SITE, "line-a") == line_client_id(SITE, "line-a")


def test_credentials_are_required(fleet, probes):
    for user, password in [(None, None), (line_user("line-a"), "wrong"), ("nobody", "x")]:
        probe = MqttProbe(fleet.broker.port, f"intruder-{user}", user, password)
        probes.append(probe)
        assert probe.connect().is_failure


def test_line_publishes_every_kind_and_the_collector_reads_them(fleet, probes):
    collector = fleet.connected("collector", "collector-1")
    probes.append(collector)
    # The collector's way of subscribing: an MQTT 5 shared subscription.
    assert not collector.subscribe(shared_fleet_filter("collectors"))[0].is_failure
    line = fleet.connected(line_user("line-a"), "line-a")
    probes.append(line)
    sent = []
    for _, example in example_messages():
        if example.KIND.value.startswith("cmd/"):
            continue
        message = example.model_copy(update={"line": "line-a", "site": SITE})
        out = prepare(message)
        assert not line.publish(out.topic, out.payload, out.qos, out.retain).is_failure
        sent.append(message)
    last = prepare(sent[-1])
    received = collector.received_until(last.topic, last.payload)
    assert [decode(m.topic, m.payload) for m in received] == sent


def test_line_cannot_publish_as_another_line(fleet, probes):
    collector = fleet.connected("collector", "collector-2")
    probes.append(collector)
    collector.subscribe("lineguard/#")
    line_a = fleet.connected(line_user("line-a"), "line-a-2")
    probes.append(line_a)
    forged = []
    for _, example in example_messages():
        message = example.model_copy(
            update={"line": "line-b", "site": SITE, "msg_id": new_msg_id()}
        )
        out = prepare(message)
        code = line_a.publish(out.topic, out.payload, out.qos, out.retain)
        assert code is not None
        assert code.is_failure, out.topic  # MQTT 5 PUBACK: Not authorized
        assert str(code) == "Not authorized"
        forged.append(out.payload)
    # A line cannot send commands, not even to itself.
    own_cmd = update_command_topic(SITE, "line-a")
    assert line_a.publish(own_cmd, b"{}").is_failure
    sentinel = prepare(_metrics("line-a"))
    assert not line_a.publish(sentinel.topic, sentinel.payload).is_failure
    received = collector.received_until(sentinel.topic, sentinel.payload)
    live = [m for m in received if not m.retain]
    assert [m.payload for m in live] == [sentinel.payload]
    assert not any(m.payload in forged for m in received)


def test_line_reads_only_its_own_commands(fleet, probes):
    line_a = fleet.connected(line_user("line-a"), "line-a-3")
    line_b = fleet.connected(line_user("line-b"), "line-b-3")
    release = fleet.connected("release", "release-3")
    probes.extend([line_a, line_b, release])
    # line-a tries its neighbour's commands and everything; mosquitto grants the
    # subscription but never delivers what the ACL does not let it read.
    line_a.subscribe(command_filter(SITE, "line-a"))
    line_a.subscribe(command_filter(SITE, "line-b"))
    line_a.subscribe("lineguard/#")
    line_b.subscribe(command_filter(SITE, "line-b"))
    for_b = prepare(example_messages()[-2][1].model_copy(update={"line": "line-b"}))
    for_a = prepare(example_messages()[-1][1].model_copy(update={"line": "line-a"}))
    assert not release.publish(for_b.topic, for_b.payload).is_failure
    assert not release.publish(for_a.topic, for_a.payload).is_failure
    got_a = line_a.received_until(for_a.topic, for_a.payload)
    assert {m.topic for m in got_a} == {for_a.topic}  # twice: two matching subscriptions
    assert decode(got_a[0].topic, got_a[0].payload).line == "line-a"
    got_b = line_b.received_until(for_b.topic, for_b.payload)
    assert [m.topic for m in got_b] == [for_b.topic]
    # line-a cannot read line-b's telemetry either (nor its own: lines only write it).
    # mosquitto routes a message before it sends the PUBACK, so once line-b has its
    # PUBACK, a later command from the release account is a valid sentinel.
    telemetry_b = prepare(_metrics("line-b"))
    assert not line_b.publish(telemetry_b.topic, telemetry_b.payload).is_failure
    sentinel = prepare(
        example_messages()[-1][1].model_copy(update={"line": "line-a", "msg_id": new_msg_id()})
    )
    assert not release.publish(sentinel.topic, sentinel.payload).is_failure
    seen = line_a.received_until(sentinel.topic, sentinel.payload)
    assert {m.topic for m in seen} == {sentinel.topic}


def test_service_accounts_are_limited(fleet, probes):
    release = fleet.connected("release", "release-4")
    collector = fleet.connected("collector", "collector-4")
    probes.extend([release, collector])
    status = prepare(example_messages()[0][1].model_copy(update={"line": "line-a"}))
    assert release.publish(status.topic, status.payload, retain=True).is_failure
    cmd = prepare(example_messages()[-1][1].model_copy(update={"line": "line-a"}))
    assert collector.publish(cmd.topic, cmd.payload).is_failure
    assert not release.publish(cmd.topic, cmd.payload).is_failure


def test_last_will_marks_the_line_offline(fleet, probes):
    line_b = fleet.probe(line_user("line-b"), "line-b-5")
    will = prepare(last_will(SITE, "line-b", T0))
    line_b.will_set(will.topic, will.payload, will.qos, will.retain)
    assert not line_b.connect().is_failure
    online = prepare(
        StatusMessage(msg_id=new_msg_id(), site=SITE, line="line-b", sent_at=T0, state="online")
    )
    assert not line_b.publish(online.topic, online.payload, online.qos, online.retain).is_failure
    line_b.drop()  # the connection dies without DISCONNECT
    monitor = fleet.connected("collector", "monitor-5")
    probes.extend([monitor, line_b])
    monitor.subscribe(will.topic)
    got = monitor.received_until(will.topic, will.payload, timeout_s=10.0)
    status = decode(got[-1].topic, got[-1].payload)
    assert isinstance(status, StatusMessage)
    assert (status.state, status.reason) == ("offline", "connection_lost")
    # Retained: a monitor that subscribes afterwards sees the offline status at once.
    # (One connection per account: the broker binds the client id to the username.)
    monitor.close()
    late = fleet.connected("collector", "monitor-5b")
    probes.append(late)
    late.subscribe(will.topic)
    first = late.get(5.0)
    assert first is not None
    assert first.retain
    assert first.payload == will.payload


def test_persistent_session_survives_a_broker_restart(tmp_path, probes):
    fleet = _start_fleet(tmp_path)
    try:
        collector = fleet.connected(
            "collector", "collector-p", clean_start=False, session_expiry_s=3600
        )
        collector.subscribe("lineguard/+/+/metrics")
        collector.close()
        line = fleet.connected(line_user("line-a"), "line-a-p")
        queued = prepare(_metrics("line-a"))
        assert not line.publish(queued.topic, queued.payload).is_failure
        retained = prepare(
            StatusMessage(msg_id=new_msg_id(), site=SITE, line="line-a", sent_at=T0, state="online")
        )
        assert not line.publish(retained.topic, retained.payload, 1, True).is_failure
        line.close()
        port = fleet.broker.port
        fleet.broker.restart()
        assert fleet.broker.port == port
        # The queued QoS 1 message for the offline session came through the restart ...
        again = fleet.connected(
            "collector", "collector-p", clean_start=False, session_expiry_s=3600
        )
        probes.append(again)
        message = again.get(5.0)
        assert message is not None
        assert (message.topic, message.payload) == (queued.topic, queued.payload)
        again.close()  # one connection per account (client id bound to the username)
        # ... and so did the retained status.
        monitor = fleet.connected("collector", "monitor-p")
        probes.append(monitor)
        monitor.subscribe(retained.topic)
        got = monitor.get(5.0)
        assert got is not None
        assert got.payload == retained.payload
        assert decode(got.topic, got.payload).state == "online"
    finally:
        for probe in probes:  # before the broker goes, or paho sits in its reconnect wait
            probe.close()
        fleet.broker.stop()


class WatchedProbe(MqttProbe):
    """A probe that counts how often the broker dropped its connection."""

    disconnects = 0

    def on_disconnect(self, reason: Reason) -> None:
        self.disconnects += 1


def _update_for(line: str) -> Outgoing:
    command = example_messages()[-2][1]
    assert command.KIND.value.startswith("cmd/")
    return prepare(command.model_copy(update={"line": line, "site": SITE, "msg_id": new_msg_id()}))


def test_a_line_cannot_take_over_another_lines_session(tmp_path, probes):
    """Issue 9, defect 4: line A's credentials with line B's client id neither kick B off
    nor get B's session, and B's queued command is waiting for B when it comes back."""
    fleet = _start_fleet(tmp_path)
    try:
        b_id = line_client_id(SITE, "line-b")
        release = fleet.connected("release", "release-t")
        probes.append(release)
        # B has a persistent session with its command subscription, and is away.
        victim = fleet.connected(line_user("line-b"), b_id, clean_start=False,
                                 session_expiry_s=3600)
        assert not victim.subscribe(command_filter(SITE, "line-b"))[0].is_failure
        victim.close()
        queued = _update_for("line-b")
        assert not release.publish(queued.topic, queued.payload).is_failure

        # A connects with B's client id, resuming "B's" session: on a broker without
        # use_username_as_clientid it would get B's session and B's queued command.
        intruder = fleet.connected(line_user("line-a"), b_id, clean_start=False,
                                   session_expiry_s=3600)
        probes.append(intruder)
        intruder.subscribe(command_filter(SITE, "line-a"))
        intruder.subscribe(command_filter(SITE, "line-b"))
        # ... nor can it publish as B, whatever client id it asked for.
        forged = prepare(_metrics("line-b"))
        assert intruder.publish(forged.topic, forged.payload).is_failure
        sentinel = _update_for("line-a")
        assert not release.publish(sentinel.topic, sentinel.payload).is_failure
        got = intruder.received_until(sentinel.topic, sentinel.payload)
        assert [m.payload for m in got] == [sentinel.payload], "A saw B's command"

        # B comes back to its session: the queued command is there, nothing lost.
        back = WatchedProbe(fleet.broker.port, b_id, line_user("line-b"),
                            fleet.passwords[line_user("line-b")], clean_start=False,
                            session_expiry_s=3600)
        probes.append(back)
        assert not back.connect().is_failure
        first = back.get(5.0)
        assert first is not None
        assert (first.topic, first.payload) == (queued.topic, queued.payload)

        # While B is online, A tries B's client id again: B stays connected and keeps
        # receiving its commands (the sentinel proves the order).
        intruder.close()  # one connection per account: `again` would replace it
        again = fleet.connected(line_user("line-a"), b_id)
        probes.append(again)
        after = _update_for("line-b")
        assert not release.publish(after.topic, after.payload).is_failure
        assert [m.payload for m in back.received_until(after.topic, after.payload)] == [
            after.payload]
        assert back.disconnects == 0
        assert back.client.connected
        assert f"Client {b_id} already connected" not in fleet.broker.log_text()
    finally:
        for probe in probes:
            probe.close()
        fleet.broker.stop()


def test_wrong_credentials_are_refused_whatever_the_client_id(fleet, probes):
    """Another line's password, a line's password for a service account, a made-up
    account: refused, with or without the victim's client id."""
    a, b = line_user("line-a"), line_user("line-b")
    attempts = [
        (a, fleet.passwords[b], line_client_id(SITE, "line-b")),
        (b, fleet.passwords[a], line_client_id(SITE, "line-b")),
        ("collector", fleet.passwords[a], "collector-x"),
        ("release", "", "release-x"),
        (f"{a}x", fleet.passwords[a], line_client_id(SITE, "line-a")),
    ]
    for user, password, client_id in attempts:
        probe = MqttProbe(fleet.broker.port, client_id, user, password)
        probes.append(probe)
        assert probe.connect().is_failure, (user, client_id)
