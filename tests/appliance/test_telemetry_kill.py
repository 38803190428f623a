"""The appliance killed (SIGKILL) with a non-empty outbox, then restarted: the backlog is
delivered, every message once; killed again in the middle of draining it (messages in
flight, some acknowledged but not yet deleted), the next start delivers the rest and the
fleet store still holds each once; and the broker publishes the last will of a killed line.

Two real processes (tests/appliance/telemetry_child.py, each with the appliance's store
and its one writer) open one SQLite file in turn; the broker is a real mosquitto on
127.0.0.1; what arrives is recorded both by a plain paho client (the wire) and by the
real cloud collector (the fleet store). Both receive every message on their own
schedule, so each is waited for on its own: the fleet store holding everything says
nothing about the wire probe (which runs its decoding in this busy process) having
caught up.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.appliance.fleet_rig import FleetRig
from tests.appliance.telemetry_helpers import Collector, migrated_db
from tests.mqtt_broker import Broker, free_port, requires_mosquitto, start_broker

pytestmark = [pytest.mark.mqtt, requires_mosquitto, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
N_EVENTS = 300


class Child:
    """One telemetry process; reads its stdout lines with a bounded wait."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.appliance.telemetry_child", *args],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )

    def expect(self, line: str, timeout_s: float) -> None:
        """Wait for `line` on stdout; the process's stderr tail is in the failure."""
        assert self.process.stdout is not None
        os.set_blocking(self.process.stdout.fileno(), False)
        deadline = time.monotonic() + timeout_s
        seen = ""
        while time.monotonic() < deadline:
            chunk = self.process.stdout.readline()
            if chunk:
                seen += chunk
                if chunk.strip() == line:
                    return
                continue
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        err = self.process.stderr.read() if self.process.stderr else ""
        pytest.fail(f"no {line!r} from the child; stdout {seen!r}; stderr tail:\n{err[-3000:]}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def port_and_broker(tmp_path: Path) -> Iterator[tuple[int, list[Broker]]]:
    brokers: list[Broker] = []
    yield free_port(), brokers
    for broker in brokers:
        broker.stop()


def outbox_rows(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM telemetry_outbox").fetchone()[0])
    finally:
        conn.close()


def test_killed_with_a_backlog_delivers_it_after_restart_once(
    tmp_path: Path, port_and_broker: tuple[int, list[Broker]]
) -> None:
    port, brokers = port_and_broker
    db = migrated_db(tmp_path)

    # 1. broker down: the line queues N events, then dies without any chance to clean up
    first = Child("enqueue", str(db), str(port), str(N_EVENTS))
    try:
        first.expect("ready", timeout_s=60)
    finally:
        first.kill()
    assert outbox_rows(db) == N_EVENTS

    # 2. broker up, collector subscribed, a new process drains the same database
    broker = start_broker(tmp_path, port=port)
    brokers.append(broker)
    collector = Collector(port)
    collector.connect()
    fleet = FleetRig(port, tmp_path)
    fleet.start()
    second = Child("drain", str(db), str(port))
    try:
        second.expect("drained", timeout_s=60)
        assert collector.wait_until(lambda c: len(c.frame_ids()) == N_EVENTS, 30), (
            f"{len(collector.frame_ids())} of {N_EVENTS} events arrived"
        )
        in_fleet = fleet.wait_count("defect_events", N_EVENTS, 30)
        assert in_fleet == N_EVENTS, f"{in_fleet} of {N_EVENTS} events in the fleet store"
        # 3. kill the connected line: the broker publishes its last will (retained)
        second.kill()
        assert collector.wait_until(
            lambda c: any(s.state == "offline" for s in c.kind("status")), 20
        ), "no last will after the line was killed"
    finally:
        second.kill()
        collector.close()
        fleet.close()

    assert fleet.event_frames() == {f"top:{i}": 1 for i in range(N_EVENTS)}
    frames = collector.frame_ids()
    assert set(frames) == {f"top:{i}" for i in range(N_EVENTS)}
    assert max(frames.values()) == 1  # one msg_id per event: never re-enqueued
    assert collector.duplicates() == 0  # nothing had been sent before the kill
    assert not collector.errors
    assert outbox_rows(db) == 0
    statuses = collector.kind("status")
    assert statuses[0].state == "online"
    will = statuses[-1]
    assert (will.state, will.reason) == ("offline", "connection_lost")


def test_killed_while_draining_resends_only_what_was_unconfirmed(
    tmp_path: Path, port_and_broker: tuple[int, list[Broker]]
) -> None:
    port, brokers = port_and_broker
    db = migrated_db(tmp_path)
    n = 1500
    first = Child("enqueue", str(db), str(port), str(n))
    try:
        first.expect("ready", timeout_s=60)
    finally:
        first.kill()

    broker = start_broker(tmp_path, port=port)
    brokers.append(broker)
    collector = Collector(port)
    collector.connect()
    fleet = FleetRig(port, tmp_path)
    fleet.start()
    try:
        # a slow drain (300 messages/s), killed once a few hundred have been stored
        slow = Child("drain", str(db), str(port), "300")
        try:
            in_fleet = fleet.wait_count("defect_events", 300, 60)
            assert in_fleet >= 300, f"only {in_fleet} stored before the kill"
        finally:
            slow.kill()
        left = outbox_rows(db)
        assert 0 < left < n, f"{left} rows left: the kill was not mid-drain"
        second = Child("drain", str(db), str(port))
        try:
            second.expect("drained", timeout_s=60)
            in_fleet = fleet.wait_count("defect_events", n, 30)
            assert in_fleet == n, f"{in_fleet} of {n} events in the fleet store"
            # the wire probe gets the same messages on its own schedule: wait for it too
            assert collector.wait_until(lambda c: len(c.frame_ids()) == n, 30), (
                f"{len(collector.frame_ids())} of {n} events on the wire"
            )
        finally:
            second.kill()
    finally:
        collector.close()
        fleet.close()

    assert fleet.event_frames() == {f"top:{i}": 1 for i in range(n)}
    frames = collector.frame_ids()
    assert set(frames) == {f"top:{i}" for i in range(n)}
    assert max(frames.values()) == 1  # a re-sent message keeps its msg_id
    # on the wire, only what was in flight or acknowledged-but-not-deleted comes twice
    assert collector.duplicates() <= 64
    assert outbox_rows(db) == 0
