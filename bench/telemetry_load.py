"""Load generators and the plain subscriber for bench/telemetry.py (run in child processes).

- `publish_schedule`: simulated lines, one MQTT connection each, publishing a timed
  schedule (metrics every simulated second, defect events at the line's fail rate) or,
  for the burst, each line's outbox backlog as fast as its in-flight window allows.
- `plain_subscriber`: a bare subscriber (the shared MQTT client of protocol/, no
  validation, no storage, automatic acks) that records receive time and `sent_at` per
  message, per site.

Payloads are the protocol's own messages, encoded once as templates; only `msg_id` and
`sent_at` are substituted at publish time, so `sent_at` is when the message left the
simulated line and building messages does not limit the publishers.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Final

from protocol import DefectEvent, MetricsMessage, ModelRef, SizedDetection, VerdictCounts, prepare
from protocol.mqtt_client import ClientOptions, Inbound, MqttHandler, Reason, paho_client
from protocol.mqtt_config import BrokerConfig

HOST: Final = "127.0.0.1"
METRICS: Final = 0
DEFECT: Final = 1
_ID_MARK: Final = "f" * 32
_SENT_MARK: Final = datetime(2001, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)
_SENT_TEXT: Final = b"2001-02-03T04:05:06.789012Z"


@dataclass(frozen=True, slots=True)
class Template:
    topic: str
    payload: bytes

    def render(self) -> bytes:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
        return (self.payload.replace(_ID_MARK.encode(), uuid.uuid4().hex.encode(), 1)
                .replace(_SENT_TEXT, now, 1))


def templates(site: str, line: str) -> tuple[Template, Template]:
    """(metrics, defect event) templates of one line."""
    model = ModelRef(name="bench-det", version=3)
    metrics = MetricsMessage(
        msg_id=_ID_MARK, site=site, line=line, sent_at=_SENT_MARK, window_s=1.0, fps=10.0,
        verdicts=VerdictCounts(passed=9, failed=1, uninspected=0),
        defects_by_class={"scratches": 1}, engine_provider="CPUExecutionProvider",
        model=model,
    )
    defect = DefectEvent(
        msg_id=_ID_MARK, site=site, line=line, sent_at=_SENT_MARK, frame_id="frame-1",
        captured_at=datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC), model=model,
        image_size_wh=(640, 480),
        defects=[SizedDetection(class_id=5, class_name="scratches", score=0.9,
                           box_xyxy=(10.0, 20.0, 110.0, 60.0))],
        latency_ms=21.5,
    )
    out = []
    for message in (metrics, defect):
        outgoing = prepare(message)
        if outgoing.payload.count(_SENT_TEXT) != 1:
            raise RuntimeError("sent_at placeholder is not unique in the template")
        out.append(Template(outgoing.topic, outgoing.payload))
    return out[0], out[1]


class _Line(MqttHandler):
    """One simulated line: its own connection and an in-flight window of `window`."""

    def __init__(self, port: int, site: str, line: str, window: int) -> None:
        self.templates = templates(site, line)
        self.window = threading.BoundedSemaphore(window)
        self.connected = threading.Event()
        self.acked = 0
        self.client = paho_client(
            BrokerConfig(host=HOST, port=port, keepalive_s=60),
            ClientOptions(client_id=f"bench-{site}-{line}", max_inflight=window), self)
        self.client.start()

    def on_connect(self, session_present: bool) -> None:
        self.connected.set()

    def on_publish_ack(self, mid: int, reason: Reason) -> None:
        self.acked += 1
        self.window.release()

    def publish(self, kind: int) -> None:
        template = self.templates[kind]
        if not self.window.acquire(timeout=60.0):
            raise TimeoutError("no PUBACK from the broker for 60 s")
        self.client.publish(template.topic, template.render(), 1, False)

    def close(self) -> None:
        self.client.stop()


def publish_schedule(
    port: int, site: str, lines: list[str], schedule: list[tuple[float, int, int]],
    backlog: int, window: int, result: Connection,
) -> None:
    """Child process: connect `lines`, say "ready", receive the wall time to start at,
    then publish either the `schedule` ((offset_s, line index, kind), sorted) or, if
    `backlog` > 0, `backlog` messages per line as fast as each line's in-flight window
    allows. Sends (published, first publish time, last PUBACK time)."""
    sims = [_Line(port, site, line, window) for line in lines]
    for sim in sims:
        if not sim.connected.wait(60.0):
            raise TimeoutError(f"{sim.client} did not connect")
    result.send("ready")
    start_at: float = result.recv()
    time.sleep(max(0.0, start_at - time.time()))
    first = time.time()
    if backlog:
        def drain(sim: _Line) -> None:
            for i in range(backlog):
                sim.publish(METRICS if i % 3 == 0 else DEFECT)
        threads = [threading.Thread(target=drain, args=(sim,)) for sim in sims]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total = backlog * len(sims)
    else:
        for offset_s, index, kind in schedule:
            delay = start_at + offset_s - time.time()
            if delay > 0:
                time.sleep(delay)
            sims[index].publish(kind)
        total = len(schedule)
    deadline = time.monotonic() + 60.0
    while sum(s.acked for s in sims) < total and time.monotonic() < deadline:
        time.sleep(0.005)
    last = time.time()
    for sim in sims:
        sim.close()
    result.send((total, first, last))


def _sent_ms(payload: bytes) -> int:
    start = payload.find(b'"sent_at":"') + 11
    end = payload.find(b'"', start)
    return int(datetime.fromisoformat(payload[start:end].decode()).timestamp() * 1000)


def plain_subscriber(port: int, commands: Connection) -> None:
    """Child process: subscribe like the collector (shared, QoS 1, MQTT 5) and answer
    ("wait", site, expected, stall_s) with (count, [(received_ms, sent_ms), ...]) once
    `expected` messages of `site` arrived or none arrived for `stall_s`."""
    received: dict[str, list[tuple[float, bytes]]] = defaultdict(list)
    subscribed = threading.Event()

    class Plain(MqttHandler):
        def on_connect(self, session_present: bool) -> None:
            client.subscribe(["$share/plain/lineguard/+/+/#"], 1)

        def on_subscribe_ack(self, mid: int, reasons: Sequence[Reason]) -> None:
            subscribed.set()

        def on_message(self, message: Inbound) -> None:
            topic = message.topic or ""
            received[topic.split("/", 2)[1]].append((time.time(), message.payload))

    client = paho_client(BrokerConfig(host=HOST, port=port, keepalive_s=60),
                         ClientOptions(client_id="bench-plain"), Plain())
    client.start()
    if not subscribed.wait(30.0):
        raise TimeoutError("plain subscriber did not subscribe")
    commands.send("ready")
    while True:
        command = commands.recv()
        if command[0] == "stop":
            break
        _, site, expected, stall_s = command
        count, changed = -1, time.monotonic()
        while len(received[site]) < expected and time.monotonic() - changed < stall_s:
            time.sleep(0.01)
            if len(received[site]) != count:
                count, changed = len(received[site]), time.monotonic()
        # Parse sent_at only now, outside the receive path.
        rows = [(int(t * 1000), _sent_ms(p)) for t, p in received[site]]
        commands.send((len(rows), rows))
    client.stop()
