"""A real mosquitto broker for tests, and a small MQTT 5 client with bounded waits.

    broker = start_broker(tmp_path)           # 127.0.0.1, a free port, persistence on
    try:
        probe = MqttProbe(broker.port, "t1")
        probe.connect()
        ...
    finally:
        broker.stop()

`Broker.restart()` keeps the port and the persistence folder (an orderly stop saves
the database, so persistent sessions and retained messages survive it); `Broker.kill()`
is an abrupt outage (SIGKILL, nothing saved since the last autosave). Tests that use
this mark themselves `@pytest.mark.mqtt` and skip with `requires_mosquitto` where the
broker is not installed.

Invariants: every wait is bounded; a broker process is always reaped by `stop()`;
`MqttProbe` is the shared client of protocol/mqtt_client.py, which never lets a handler
raise into paho's thread.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import queue
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import SecretStr

from protocol import Outgoing
from protocol.mqtt_client import (
    SUCCESS,
    ClientOptions,
    Inbound,
    MqttHandler,
    Reason,
    paho_client,
)
from protocol.mqtt_config import BrokerConfig

MOSQUITTO = Path("/usr/sbin/mosquitto")
HOST = "127.0.0.1"

requires_mosquitto = pytest.mark.skipif(
    not os.access(MOSQUITTO, os.X_OK), reason=f"{MOSQUITTO} is not installed"
)


class BrokerError(RuntimeError):
    """The broker did not start (its log tail is in the message)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Broker:
    """One mosquitto process; `directory` holds its config, database and log."""

    port: int
    directory: Path
    conf_extra: str = ""
    start_timeout_s: float = 10.0
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def conf_path(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    @property
    def persistence_dir(self) -> Path:
        return self.directory / "data"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_text(self) -> str:
        """The broker's log so far (stderr), for assertion messages."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text("utf-8", errors="replace")

    def _write_conf(self) -> None:
        self.persistence_dir.mkdir(exist_ok=True)
        base = [
            f"listener {self.port} {HOST}",
            # Run as whoever runs the tests: as root, mosquitto would otherwise switch to
            # the `mosquitto` user, which cannot read a pytest tmp_path.
            f"user {getpass.getuser()}",
            "persistence true",
            f"persistence_location {self.persistence_dir}/",
            "log_dest stderr",
            "log_type all",
            "allow_anonymous true",
        ]
        self.conf_path.write_text("\n".join(base) + "\n" + self.conf_extra + "\n", "utf-8")

    def start(self) -> None:
        """Start the process and wait until it accepts TCP connections.

        Raises BrokerError if it exits or does not listen within `start_timeout_s`.
        """
        if self.running:
            return
        self._write_conf()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(MOSQUITTO), "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                raise BrokerError(f"mosquitto exited at start:\n{self.log_text()[-3000:]}")
            if _port_open(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"mosquitto not listening on {self.port}:\n{self.log_text()[-3000:]}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Orderly stop (SIGTERM: mosquitto saves its database); SIGKILL if it hangs."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)

    def kill(self) -> None:
        """Abrupt outage: SIGKILL, no database save."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10.0)

    def restart(self) -> None:
        """Orderly stop, then start again on the same port with the same persistence."""
        self.stop()
        self.start()

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads the password and ACL files."""
        if self._process is not None:
            self._process.send_signal(signal.SIGHUP)

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_broker(tmp_path: Path, conf_extra: str = "", port: int | None = None) -> Broker:
    """Start mosquitto on 127.0.0.1 with persistence under `tmp_path`.

    `conf_extra` is appended to the base config (listener, user, persistence, logging,
    `allow_anonymous true`; a later `allow_anonymous false` overrides it; do not set
    `listener` or `persistence_location` there). With `port=None` a free port is picked,
    retried a few times if another process takes it first. Call `.stop()` when done.
    Raises BrokerError if it cannot start.
    """
    directory = Path(tempfile.mkdtemp(prefix="mosquitto-", dir=tmp_path))
    attempts = 1 if port is not None else 3
    error: BrokerError | None = None
    for _ in range(attempts):
        broker = Broker(port=port or free_port(), directory=directory, conf_extra=conf_extra)
        try:
            broker.start()
        except BrokerError as e:
            error = e
            continue
        return broker
    assert error is not None
    raise error


class MqttProbe(MqttHandler):
    """An MQTT 5 test client on the shared client of protocol/: received messages go to
    a queue; every call waits bounded.

    Not a pytest test class (the name does not start with Test).
    """

    def __init__(
        self,
        port: int,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        *,
        clean_start: bool = True,
        session_expiry_s: int = 0,
    ) -> None:
        self.port = port
        self.clean_start = clean_start
        self.session_expiry_s = session_expiry_s
        self.messages: queue.Queue[Inbound] = queue.Queue(maxsize=10_000)
        self.connect_result: Reason | None = None
        self._will: Outgoing | None = None
        self._lock = threading.Condition()
        self._acks: dict[int, list[Reason]] = {}
        self.client = paho_client(
            BrokerConfig(
                host=HOST, port=port, keepalive_s=30, username=username,
                password=SecretStr(password) if password is not None else None,
            ),
            ClientOptions(client_id=client_id, clean_start=clean_start,
                          session_expiry_s=session_expiry_s),
            self,
        )

    # -- client events (the client's network thread) --
    def will(self) -> Outgoing | None:
        return self._will

    def on_connect(self, session_present: bool) -> None:
        with self._lock:
            self.connect_result = SUCCESS
            self._lock.notify_all()

    def on_connect_refused(self, reason: Reason) -> None:
        with self._lock:
            self.connect_result = reason
            self._lock.notify_all()

    def on_message(self, message: Inbound) -> None:
        # A test that lets 10,000 messages pile up has already failed; drop the rest.
        with contextlib.suppress(queue.Full):
            self.messages.put_nowait(message)

    def _ack(self, mid: int, codes: list[Reason]) -> None:
        with self._lock:
            self._acks[mid] = codes
            self._lock.notify_all()

    def on_publish_ack(self, mid: int, reason: Reason) -> None:
        self._ack(mid, [reason])

    def on_subscribe_ack(self, mid: int, reasons: Sequence[Reason]) -> None:
        self._ack(mid, list(reasons))

    def _wait_ack(self, mid: int | None, timeout_s: float) -> list[Reason]:
        with self._lock:
            if mid is None or not self._lock.wait_for(lambda: mid in self._acks,
                                                      timeout=timeout_s):
                raise TimeoutError(f"no acknowledgement for message id {mid}")
            return self._acks.pop(mid)

    # -- API for tests --
    def will_set(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Register a last will; call before `connect`."""
        self._will = Outgoing(topic, payload, qos, retain)

    def connect(self, timeout_s: float = 5.0) -> Reason:
        """Connect and return the CONNACK reason code (a failure code does not raise).

        Raises TimeoutError if no CONNACK arrives within `timeout_s`.
        """
        with self._lock:
            self.connect_result = None
        self.client.start()
        with self._lock:
            self._lock.wait_for(lambda: self.connect_result is not None, timeout=timeout_s)
            result = self.connect_result
        if result is None:
            self.close()
            raise TimeoutError(f"no CONNACK from 127.0.0.1:{self.port}")
        if result.is_failure:
            self.close()
        return result

    def subscribe(self, topic: str, qos: int = 1, timeout_s: float = 5.0) -> list[Reason]:
        """Subscribe and return the SUBACK reason codes (failure codes do not raise)."""
        return self._wait_ack(self.client.subscribe([topic], qos), timeout_s)

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, timeout_s: float = 5.0
    ) -> Reason | None:
        """Publish; for QoS 1 wait for the PUBACK and return its reason code."""
        mid = self.client.publish(topic, payload, qos, retain)
        if qos == 0:
            return None
        return self._wait_ack(mid, timeout_s)[0]

    def get(self, timeout_s: float = 5.0) -> Inbound | None:
        """The next received message, or None after `timeout_s`."""
        try:
            return self.messages.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def received_until(
        self, topic: str, payload: bytes | None = None, timeout_s: float = 5.0
    ) -> list[Inbound]:
        """All messages received up to and including the first one on `topic`
        (with exactly `payload`, if given).

        Raises TimeoutError if it does not arrive within `timeout_s`. Publish a sentinel
        after something that must *not* arrive, then check this list: the broker keeps
        one publisher's order, so anything it let through comes before the sentinel.
        """
        deadline = time.monotonic() + timeout_s
        seen: list[Inbound] = []
        while (left := deadline - time.monotonic()) > 0:
            message = self.get(left)
            if message is None:
                break
            seen.append(message)
            if message.topic == topic and (payload is None or message.payload == payload):
                return seen
        raise TimeoutError(f"nothing on {topic} within {timeout_s} s; got {len(seen)} others")

    def close(self) -> None:
        """Disconnect (no will is sent) and stop the network thread; safe to call twice."""
        self.client.stop()

    def drop(self) -> None:
        """Close the socket without DISCONNECT, so the broker publishes the will."""
        self.client.abort()
