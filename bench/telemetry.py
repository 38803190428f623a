"""Telemetry benchmark: the cloud collector's ingest against a plain MQTT subscriber.

A local mosquitto (on a free port of 127.0.0.1, settings as deploy/mosquitto) carries
the same load twice: once to a plain paho subscriber (no validation, no storage,
automatic acks) and once to `lineguard cloud collect` (a real process: validation,
de-duplication, database commit (SQLite, or PostgreSQL with `--database-url`),
then acks). Load, per phase:

- n1, n10, n50: N simulated lines at realistic rates sped up `--speed` times: a metrics
  message every simulated second and a defect event per failed part (10 parts/s, 5 %
  fail), for `--seconds` of wall time;
- burst: 50 lines drain an outbox backlog of `--burst` messages in total (1/3 metrics,
  2/3 defect events) as fast as their in-flight windows allow.

For each consumer: rate = messages / (last - first consumption) where consumption is
receipt (plain) or the commit of its batch (collector); lag = sent_at -> consumption
(p50/p99; `sent_at` is stamped when the simulated line publishes); CPU = the
consumer's own CPU time per message (user + system, all its processes), which does
not depend on what else the machine runs. The ratio is collector rate / plain rate; the
target is >= 0.8. With realistic rates both keep up with the offered load (ratio ~1,
the lag is the interesting number); the burst is where a consumer's own capacity
shows. The collector runs with `--workers` processes (default: the cores, at most 4);
validation costs CPU, so one collector process per core is how it keeps up with a
subscriber that does nothing. A phase a consumer did not finish (nothing new for 60 s)
has no ratio and the JSON says `"complete": false`.

    .venv/bin/python bench/telemetry.py            # n1, n10, n50 and a 100,000 burst
    .venv/bin/python bench/telemetry.py --quick    # smoke: n1, n10, a 3,000 burst
    .venv/bin/python bench/telemetry.py --workers 1   # one collector process
    .venv/bin/python bench/telemetry.py --database-url postgresql+psycopg://postgres@127.0.0.1/bench
                                                      # the collector on PostgreSQL (an
                                                      # empty database; default: SQLite)

Prints a table and one JSON line (`{"bench": "telemetry", ...}`).
"""

from __future__ import annotations

import argparse
import getpass
import json
import multiprocessing as mp
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from machine import cpu_model
from sqlalchemy import NullPool, create_engine, text
from sqlalchemy.exc import DBAPIError
from telemetry_load import DEFECT, HOST, METRICS, plain_subscriber, publish_schedule, templates

from protocol.mqtt_client import ClientOptions, MqttHandler, paho_client
from protocol.mqtt_config import BrokerConfig

REPO = Path(__file__).resolve().parents[1]
MOSQUITTO = Path("/usr/sbin/mosquitto")
TARGET_RATIO = 0.8
PARTS_PER_S = 10
FAIL_RATE = 0.05
STALL_S = 60.0  # a phase gives up when nothing new arrives for this long

BROKER_CONF = """listener {port} 127.0.0.1
user {user}
allow_anonymous true
persistence false
max_queued_messages 200000
max_inflight_messages 20
max_packet_size 270336
log_dest stderr
log_type error
log_type warning
"""


@dataclass(frozen=True)
class Phase:
    name: str
    lines: int
    schedule: list[tuple[float, int, int]]
    backlog: int  # per line; 0 for a scheduled phase

    @property
    def total(self) -> int:
        return self.backlog * self.lines if self.backlog else len(self.schedule)


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its descendants so far (Linux)."""
    total = 0.0
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        return total
    return total + sum(cpu_s(child) for child in children)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def realistic_schedule(lines: int, seconds: float, speed: float,
                       seed: int) -> list[tuple[float, int, int]]:
    """(offset_s, line, kind) for `seconds` of wall time at `speed` x real time."""
    rng = random.Random(seed)
    events = []
    for line in range(lines):
        phase = rng.random()
        for s in range(int(seconds * speed)):
            events.append(((s + phase) / speed, line, METRICS))
            for _ in range(PARTS_PER_S):
                if rng.random() < FAIL_RATE:
                    events.append(((s + rng.random()) / speed, line, DEFECT))
    return sorted(events)


def start_broker(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(BROKER_CONF.format(port=port, user=getpass.getuser()), "utf-8")
    with (directory / "mosquitto.log").open("wb") as log:  # the child keeps its own copy
        broker = subprocess.Popen([str(MOSQUITTO), "-c", str(conf)], stdout=log,
                                  stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return broker, port
        except OSError:
            time.sleep(0.05)
    broker.kill()
    raise RuntimeError("mosquitto did not start")


def run_load(port: int, site: str, phase: Phase, window: int) -> tuple[int, float, float]:
    """Publish the phase's load from child processes; (published, first, last ack)."""
    procs = 1 if phase.lines <= 10 else 2
    names = [f"l{i:02d}" for i in range(phase.lines)]
    children: list[tuple[Any, Connection]] = []
    for p in range(procs):
        mine = list(range(p, phase.lines, procs))
        remap = {line: i for i, line in enumerate(mine)}
        schedule = [(t, remap[line], kind) for t, line, kind in phase.schedule if line in remap]
        parent, child = mp.Pipe()
        process = mp.Process(target=publish_schedule, daemon=True, args=(
            port, site, [names[i] for i in mine], schedule, phase.backlog, window, child))
        process.start()
        children.append((process, parent))
    for _, conn in children:
        if not conn.poll(120) or conn.recv() != "ready":
            raise RuntimeError("a publisher did not connect")
    start_at = time.time() + 0.2
    for _, conn in children:
        conn.send(start_at)
    published, first, last = 0, float("inf"), 0.0
    for process, conn in children:
        if not conn.poll(600):
            raise RuntimeError("a publisher did not finish")
        n, f, la = conn.recv()
        published, first, last = published + n, min(first, f), max(last, la)
        process.join(30)
    return published, first, last


def summarize(rows: list[tuple[int, int]], expected: int, cpu: float) -> dict[str, Any]:
    """rows: (consumed_ms, sent_ms). Rate over first..last consumption; lag percentiles;
    the consumer's CPU time per message (what it costs, whatever the neighbours do)."""
    n = len(rows)
    if n == 0:
        return {"count": 0, "expected": expected, "per_s": 0.0, "lag_p50_ms": None,
                "lag_p99_ms": None, "cpu_us_per_msg": None}
    consumed = [c for c, _ in rows]
    span_s = (max(consumed) - min(consumed)) / 1000.0
    lags = sorted(c - s for c, s in rows)
    return {
        "count": n, "expected": expected,
        "per_s": round(n / span_s, 1) if span_s > 0 else None,
        "lag_p50_ms": lags[(n - 1) * 50 // 100],
        "lag_p99_ms": lags[(n - 1) * 99 // 100],
        "cpu_us_per_msg": round(cpu / n * 1e6, 1),
    }


def _read(db: str, query: str, **params: object) -> list[Any]:
    """One read on the collector's database (a fresh connection: no pool to outlive)."""
    engine = create_engine(db, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(query), params))
    finally:
        engine.dispose()


def wait_rows(db: str, site: str, expected: int) -> list[tuple[int, int]]:
    """Poll the collector's store until `expected` messages of `site` are committed."""
    count, last_change, last_count = 0, time.monotonic(), -1
    while count < expected and time.monotonic() - last_change < STALL_S:
        time.sleep(0.2)
        count = _read(db, "SELECT COUNT(*) FROM messages WHERE site = :site", site=site)[0][0]
        if count != last_count:
            last_change, last_count = time.monotonic(), count
    rows = _read(db, "SELECT stored_at_ms, sent_at_ms FROM messages WHERE site = :site",
                 site=site)
    return [(int(a), int(b)) for a, b in rows]


def start_collector(tmp: Path, port: int, workers: int,
                    db: str) -> tuple[subprocess.Popen[bytes], str]:
    config = tmp / "cloud.yaml"
    config.write_text(
        f"database: {{url: '{db}'}}\n"
        f"collector: {{group: bench, log_interval_s: 0, workers: {workers},\n"
        f"            broker: {{port: {port}, client_id: bench-collector}}}}\n", "utf-8")
    log = (tmp / "collector.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "lineguard", "cloud", "collect", "--config", str(config)],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    # Ready once every worker committed a sentinel (its subscription exists from then on).
    probe = paho_client(BrokerConfig(host=HOST, port=port),
                        ClientOptions(client_id="bench-sentinel"), MqttHandler())
    probe.start()
    sentinel = templates("sentinel", "l00")[0]
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"collector exited: see {tmp / 'collector.log'}")
            probe.publish(sentinel.topic, sentinel.render(), 1, False)
            time.sleep(0.5)
            try:
                if workers_storing(db) >= workers:
                    return process, db
            except DBAPIError:
                pass  # not created or migrated yet
        raise RuntimeError("collector did not start storing")
    finally:
        probe.stop()


def workers_storing(db: str) -> int:
    """How many collector workers have committed something (sentinels are dealt out
    round robin, so every subscribed worker soon has)."""
    if db.startswith("sqlite:///") and not Path(db.removeprefix("sqlite:///")).exists():
        return 0
    return int(_read(db, "SELECT COUNT(DISTINCT collector_id) FROM counters "
                         "WHERE name = 'stored'")[0][0])


def run(args: argparse.Namespace) -> dict[str, Any]:
    ns = [1, 10] if args.quick else [1, 10, 50]
    seconds = 1.5 if args.quick else args.seconds
    burst = 3000 if args.quick else args.burst
    phases = [Phase(f"n{n}", n, realistic_schedule(n, seconds, args.speed, seed=n), 0)
              for n in ns]
    burst_lines = min(50, max(1, burst // 60))
    phases.append(Phase("burst", burst_lines, [], burst // burst_lines))
    if args.phases:
        phases = [p for p in phases if p.name in args.phases.split(",")]
    results: dict[str, dict[str, Any]] = {p.name: {"lines": p.lines} for p in phases}
    with tempfile.TemporaryDirectory(prefix="bench-telemetry-") as tmp_name:
        tmp = Path(tmp_name)
        broker, port = start_broker(tmp)
        try:
            parent, child = mp.Pipe()
            plain = mp.Process(target=plain_subscriber, args=(port, child), daemon=True)
            plain.start()
            if not parent.poll(120) or parent.recv() != "ready":
                raise RuntimeError("plain subscriber did not start")
            assert plain.pid is not None
            for phase in phases:
                cpu0 = cpu_s(plain.pid)
                published, first, last = run_load(port, f"p-{phase.name}", phase, args.window)
                results[phase.name]["offered_per_s"] = round(published / (last - first), 1)
                parent.send(("wait", f"p-{phase.name}", published, STALL_S))
                _, rows = parent.recv()
                results[phase.name]["plain"] = summarize(rows, published,
                                                         cpu_s(plain.pid) - cpu0)
            parent.send(("stop",))
            plain.join(30)
            url = args.database_url or f"sqlite:///{tmp / 'fleet.db'}"
            collector, db = start_collector(tmp, port, args.workers, url)
            try:
                for phase in phases:
                    site = f"c-{phase.name}"
                    cpu0 = cpu_s(collector.pid)
                    published, first, last = run_load(port, site, phase, args.window)
                    rows = wait_rows(db, site, published)
                    results[phase.name]["collector"] = summarize(
                        rows, published, cpu_s(collector.pid) - cpu0)
            finally:
                collector.terminate()
                collector.wait(60)
        finally:
            broker.terminate()
            broker.wait(30)
    for r in results.values():
        plain, coll = r["plain"], r["collector"]
        complete = plain["count"] == plain["expected"] and coll["count"] == coll["expected"]
        # A consumer that gave up (stalled) has no comparable rate.
        r["ratio"] = (round(coll["per_s"] / plain["per_s"], 3)
                      if complete and plain["per_s"] and coll["per_s"] else None)
    return results


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    head = (f"{'phase':<6} {'lines':>5} {'msgs':>7} {'offered/s':>10} {'plain/s':>9} "
            f"{'collector/s':>11} {'ratio':>6} | {'lag p50/p99 ms: plain':>21} "
            f"{'collector':>13} | {'CPU us/msg: plain':>17} {'collector':>9}")
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        p, c = r["plain"], r["collector"]
        print(f"{name:<6} {r['lines']:>5} {c['count']:>7} {r['offered_per_s']:>10} "
              f"{p['per_s']!s:>9} {c['per_s']!s:>11} {r['ratio']!s:>6} | "
              f"{p['lag_p50_ms']!s:>12} /{p['lag_p99_ms']!s:>7} "
              f"{c['lag_p50_ms']!s:>6} /{c['lag_p99_ms']!s:>6} | "
              f"{p['cpu_us_per_msg']!s:>17} {c['cpu_us_per_msg']!s:>9}")
    ratios = [r["ratio"] for r in results.values() if r["ratio"] is not None]
    complete = all(r[k]["count"] == r[k]["expected"] for r in results.values()
                   for k in ("plain", "collector"))
    load = os.getloadavg()
    database = args.database_url.split(":")[0] or "sqlite"
    print(f"collector workers {args.workers}; database {database}; "
          f"CPU {cpu_model()}, {os.cpu_count()} threads, "
          f"load average {load[0]:.1f}; target ratio >= {TARGET_RATIO}; complete: {complete}")
    print(json.dumps({
        "bench": "telemetry", "quick": args.quick, "speed": args.speed,
        "workers": args.workers, "database": database, "target_ratio": TARGET_RATIO,
        "min_ratio": min(ratios) if ratios else None, "complete": complete,
        "cpu": cpu_model(), "cpus": os.cpu_count(), "load_avg_1m": round(load[0], 2),
        "phases": results,
    }))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run (seconds)")
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="wall seconds of load per realistic phase")
    parser.add_argument("--speed", type=float, default=10.0,
                        help="simulated seconds per wall second")
    parser.add_argument("--burst", type=int, default=100_000, help="backlog messages in all")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="collector worker processes (collector.workers)")
    parser.add_argument("--window", type=int, default=100,
                        help="in-flight QoS 1 messages per simulated line")
    parser.add_argument("--database-url", default="",
                        help="the collector's database: an empty PostgreSQL database's "
                        "URL (default: an SQLite file in the run's temporary folder)")
    parser.add_argument("--phases", default="",
                        help="run only these phases (comma-separated, e.g. burst)")
    args = parser.parse_args(argv)
    if not os.access(MOSQUITTO, os.X_OK):
        print(f"{MOSQUITTO} is not installed", file=sys.stderr)
        return 2
    results = run(args)
    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
