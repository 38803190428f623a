"""Benchmark: where the telemetry outbox should write. Three layouts, same Outbox code:

- `store-writer`: the outbox table in the appliance database, every outbox write a
  function run by the store's writer thread in its batch transaction (what ships);
- `own-file`: the outbox in a file of its own with its own writer thread (a second
  `Store` on a second file: the same writer code);
- `2nd-conn`: before this change: the outbox's own write connection to the appliance
  database (BEGIN IMMEDIATE on the publisher's thread, competing for the write lock).

For each: the enqueue rate (messages of ~400 bytes written in the publisher's way, one
write of `--batch` messages outstanding at a time, each waited for), the ack-delete rate
(the same rows deleted by id, `--batch` per write), and the verdict write rate of the
store alone and while the outbox takes `--rate` messages/s (written every 20 ms, each
write also deleting the previous write's rows, as acknowledgements do).

    .venv/bin/python bench/outbox.py [--n 20000] [--verdicts 50000] [--rate 1000]
                                     [--batch 50] [--repeat 3]

Prints a table (best of `--repeat`, and process CPU seconds per verdict) with the CPU
model and thread count, and one JSON line (`{"bench": "outbox", ...}`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from appliance.errors import StoreError
from appliance.records import InspectionRecord
from appliance.store import ImageKeepConfig, Store, StoreConfig
from appliance.store.transaction import Pending, T, Work
from appliance.telemetry.errors import OutboxUnavailable
from appliance.telemetry.outbox import NewMessage, Outbox, OutboxDatabase
from bench.machine import cpu_model, cpu_threads
from bench.store import synthetic_records

LAYOUTS = ("store-writer", "own-file", "2nd-conn")
PAYLOAD = b'{"schema": "lineguard.defect/1", "frame_id": "top:123456", ' + b'"x": 0, ' * 40 + b"}"


class SecondConnection:
    """The layout before this change: the outbox's own write connection to the store's
    file; a write runs at once on the caller's thread (BEGIN IMMEDIATE)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                                     timeout=2.0)
        self._conn.execute("PRAGMA synchronous = NORMAL")

    def transact(
        self, work: Work[T], on_done: Callable[[], None] | None = None, *, urgent: bool = False
    ) -> Pending[T]:
        pending: Pending[T] = Pending(work, on_done)
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            value = work(self._conn)
            self._conn.execute("COMMIT")
        except sqlite3.Error as e:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            pending.fail(StoreError(str(e)))
        else:
            pending.resolve(value)
        return pending

    def close(self) -> None:
        self._conn.close()


def store_cfg(path: Path) -> StoreConfig:
    return StoreConfig(path=path, images=ImageKeepConfig(dir=path.parent / "images",
                                                         keep_pass_fraction=0.0))


@contextmanager
def layout(name: str, workdir: Path) -> Iterator[tuple[Store, OutboxDatabase]]:
    """The verdict store and where the outbox writes, for one layout."""
    store = Store(store_cfg(workdir / "lineguard.db"))
    store.start()
    other: Store | None = None
    second: SecondConnection | None = None
    try:
        if name == "store-writer":
            yield store, store
        elif name == "own-file":
            other = Store(store_cfg(workdir / "outbox.db"))
            other.start()
            yield store, other
        else:
            second = SecondConnection(store.path)
            yield store, second
    finally:
        if second is not None:
            second.close()
        if other is not None:
            other.stop()
        store.stop()


def messages(start: int, n: int) -> list[NewMessage]:
    return [NewMessage(kind="events/defect", topic="lineguard/p/l/events/defect",
                       payload=PAYLOAD, qos=1, retain=False, msg_id=f"m{i:012d}",
                       created_at=1.7e9 + i) for i in range(start, start + n)]


def bench_outbox(db: OutboxDatabase, n: int, batch: int) -> tuple[float, float]:
    """(enqueue messages/s, ack-delete rows/s), one write outstanding at a time."""
    outbox = Outbox(db, max_rows=10 * n, hard_max_rows=10 * n)
    ids: list[int] = []
    t0 = time.perf_counter()
    for k in range(0, n, batch):
        ids += [r.id for r in outbox.write(messages(k, batch)).admitted]
    enqueue_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for k in range(0, len(ids), batch):
        outbox.write([], acked_ids=ids[k:k + batch])
    delete_s = time.perf_counter() - t0
    if outbox.depth != 0 or len(ids) != n:
        raise RuntimeError(f"benchmark lost rows: depth {outbox.depth}, ids {len(ids)}")
    outbox.close()
    return n / enqueue_s, n / delete_s


def telemetry_load(db: OutboxDatabase, rate_per_s: float, stop: threading.Event,
                   written: list[int], failed: list[int]) -> None:
    """Every 20 ms: the messages due at `rate_per_s`, and the deletes of the last write's
    rows (their acknowledgements); `rate_per_s` <= 0: as fast as it goes. A failed write
    (SQLite busy past the timeout) is counted and retried, as the publisher does."""
    outbox = Outbox(db, max_rows=10_000_000, hard_max_rows=10_000_000)
    acked: list[int] = []
    k = errors = 0
    t0 = time.perf_counter()
    while not stop.is_set():
        due = int((time.perf_counter() - t0) * rate_per_s) - k if rate_per_s > 0 else 50
        try:
            result = outbox.write(messages(k, max(0, due)), acked_ids=acked)
        except OutboxUnavailable:
            errors += 1
            continue
        acked = [r.id for r in result.admitted]
        k += max(0, due)
        if rate_per_s > 0:
            stop.wait(0.02)
    with contextlib.suppress(OutboxUnavailable):
        outbox.write([], acked_ids=acked)
    written.append(k)
    failed.append(errors)
    outbox.close()


def bench_verdicts(store: Store, db: OutboxDatabase | None, records: list[InspectionRecord],
                   rate_per_s: float) -> tuple[float, float, float, int]:
    """(verdicts/s, process CPU us per verdict, outbox messages/s meanwhile, outbox writes
    that failed with "database is locked")."""
    stop = threading.Event()
    written: list[int] = []
    failed: list[int] = []
    thread = None
    if db is not None:
        thread = threading.Thread(target=telemetry_load,
                                  args=(db, rate_per_s, stop, written, failed))
        thread.start()
        time.sleep(0.1)
    t0, c0 = time.perf_counter(), time.process_time()
    for r in records:
        store.submit(r)
    store.flush(timeout_s=600.0)
    elapsed, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    stop.set()
    if thread is not None:
        thread.join(60)
    msgs = written[0] / elapsed if written else 0.0
    return len(records) / elapsed, 1e6 * cpu_s / len(records), msgs, sum(failed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--verdicts", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    records = synthetic_records(args.verdicts)
    rows: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="lineguard-bench-outbox-") as tmp:
        run = 0
        for _ in range(max(1, args.repeat)):
            for name in LAYOUTS:  # interleaved: a busy neighbour hurts all layouts alike
                r = rows.setdefault(name, {})
                for case, load in (("alone", None), ("rate", args.rate), ("max", 0.0)):
                    run += 1
                    workdir = Path(tmp) / f"run{run}"
                    workdir.mkdir()
                    with layout(name, workdir) as (store, db):
                        if case == "alone":
                            enq, dele = bench_outbox(db, args.n, args.batch)
                            r.setdefault("enqueue_per_s", []).append(enq)
                            r.setdefault("delete_per_s", []).append(dele)
                            v, us, _, _ = bench_verdicts(store, None, records, 0.0)
                        else:
                            v, us, m, f = bench_verdicts(store, db, records, load or 0.0)
                            r.setdefault(f"outbox_{case}_msgs_per_s", []).append(m)
                            r.setdefault("locked_errors", []).append(float(f))
                        r.setdefault(f"verdicts_{case}_per_s", []).append(v)
                        r.setdefault(f"verdicts_{case}_cpu_us", []).append(us)
    cpu = f"{cpu_model()}, {cpu_threads()} threads, SQLite {sqlite3.sqlite_version}"
    print(f"outbox layouts on {cpu}; best of {args.repeat} (median in the JSON)")
    cols = ["enqueue_per_s", "delete_per_s", "verdicts_alone_per_s",
            "verdicts_rate_per_s", "verdicts_max_per_s", "outbox_max_msgs_per_s",
            "verdicts_alone_cpu_us", "verdicts_rate_cpu_us", "locked_errors"]
    heads = ["enqueue/s", "ack-del/s", "verd/s", f"verd/s@{args.rate:.0f}", "verd/s@max",
             "outbox@max", "us/verd", f"us/verd@{args.rate:.0f}", "locked(sum)"]
    print(f"{'layout':<14}" + "".join(f"{h:>13}" for h in heads))
    for name in LAYOUTS:
        r = rows[name]
        best = [sum(r[c]) if c == "locked_errors" else min(r[c]) if c.endswith("_us")
                else max(r[c]) for c in cols]
        print(f"{name:<14}" + "".join(f"{b:>13,.0f}" for b in best))
    print(json.dumps({
        "bench": "outbox", "cpu": cpu, "n": args.n, "verdicts": args.verdicts,
        "rate": args.rate, "batch": args.batch,
        "median": {name: {c: round(statistics.median(v), 1) for c, v in r.items()}
                   for name, r in rows.items()},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
