"""Operator panel clients for `bench/pipeline.py --panel`: N clients (threads of this
process, a process apart from the appliance, like browsers), each logged in, following
the live view like panel.js does (GET /api/live?after=seq every 100 ms) and polling the
counters and the series every second. Prints `ready` once every client has logged in,
runs until stdin closes, then prints one JSON line: requests made, live frames received,
errors.

    python bench/panel_clients.py URL USER PASSWORD [CLIENTS]
"""

from __future__ import annotations

import json
import sys
import threading
import time

import httpx


def client(url: str, user: str, password: str, ready: threading.Barrier,
           stop: threading.Event, totals: dict[str, int], lock: threading.Lock) -> None:
    counts = {"requests": 0, "frames": 0, "errors": 0, "jpeg_bytes": 0}
    with httpx.Client(base_url=url, timeout=10.0) as c:
        r = c.post("/login", data={"username": user, "password": password})
        if r.status_code != 303 or r.headers.get("location") != "/live":
            raise SystemExit(f"login failed: {r.status_code} {r.text[:200]}")
        ready.wait()
        seq, next_poll = 0, 0.0
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                live = c.get("/api/live", params={"after": seq}).json()
                counts["requests"] += 1
                seq = live["seq"]
                for frame in live["stations"].values():
                    counts["frames"] += 1
                    counts["jpeg_bytes"] += len(frame.get("jpeg_b64") or "") * 3 // 4
                if t0 >= next_poll:
                    next_poll = t0 + 1.0
                    for path in ("/api/counters", "/api/series"):
                        c.get(path).raise_for_status()
                        counts["requests"] += 1
            except httpx.HTTPError:
                counts["errors"] += 1
            stop.wait(max(0.0, 0.1 - (time.monotonic() - t0)))
    with lock:
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v


def main(argv: list[str]) -> int:
    url, user, password = argv[:3]
    n = int(argv[3]) if len(argv) > 3 else 5
    ready = threading.Barrier(n + 1)
    stop = threading.Event()
    totals: dict[str, int] = {}
    lock = threading.Lock()
    threads = [threading.Thread(target=client, args=(url, user, password, ready, stop,
                                                     totals, lock)) for _ in range(n)]
    for t in threads:
        t.start()
    ready.wait(timeout=120)
    print("ready", flush=True)
    t0 = time.monotonic()
    sys.stdin.read()  # until the benchmark closes our stdin
    stop.set()
    for t in threads:
        t.join(15)
    seconds = round(time.monotonic() - t0, 2)
    print(json.dumps({**totals, "clients": n, "seconds": seconds}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
