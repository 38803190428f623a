"""Operator panel clients for `bench/pipeline.py --panel`: N clients (threads of this
process, a process apart from the appliance, like browsers), each logged in, following
the live view like panel.js does (the server-sent events of /api/live/stream, a frame at
most at the live rate) and polling the counters and the series every second. Prints
`ready` once every client has logged in, runs until stdin closes, then prints one JSON
line: requests made, live frames received, errors.

    python bench/panel_clients.py URL USER PASSWORD [CLIENTS]
"""

from __future__ import annotations

import json
import sys
import threading
import time

import httpx


def poll_counters(c: httpx.Client, stop: threading.Event, counts: dict[str, int]) -> None:
    while not stop.wait(1.0):
        try:
            for path in ("/api/counters", "/api/series"):
                c.get(path).raise_for_status()
                counts["requests"] += 1
        except httpx.HTTPError:
            counts["errors"] += 1


def client(url: str, user: str, password: str, ready: threading.Barrier,
           stop: threading.Event, totals: dict[str, int], lock: threading.Lock) -> None:
    """One operator: the live page's event stream, and the counters every second."""
    counts = {"requests": 0, "frames": 0, "errors": 0, "jpeg_bytes": 0}
    # login verifies an argon2 hash (and may rehash it): slow on a busy machine
    with httpx.Client(base_url=url, timeout=60.0) as c:
        r = c.post("/login", data={"username": user, "password": password})
        if r.status_code != 303 or r.headers.get("location") != "/live":
            raise SystemExit(f"login failed: {r.status_code} {r.text[:200]}")
        ready.wait()
        poller = threading.Thread(target=poll_counters, args=(c, stop, counts))
        poller.start()
        try:
            with c.stream("GET", "/api/live/stream") as stream:
                counts["requests"] += 1
                for line in stream.iter_lines():
                    if stop.is_set():
                        break
                    if line.startswith("data: "):
                        for frame in json.loads(line[6:])["stations"].values():
                            counts["frames"] += 1
                            counts["jpeg_bytes"] += len(frame.get("jpeg_b64") or "") * 3 // 4
        except httpx.HTTPError:
            if not stop.is_set():
                counts["errors"] += 1
        stop.wait()
        poller.join()
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
