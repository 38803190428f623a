"""A telemetry process for the kill -9 test (run as `python -m tests.appliance.telemetry_child`):
the appliance's store on DB (its writer writes the outbox) and the telemetry.

    enqueue DB PORT N   hand N defect events over (frames top:0 .. top:N-1), print
                        "ready" once all N are in the outbox, then wait to be killed
    drain DB PORT [R]   publish the outbox (the backlog at R messages/s, default the
                        helpers' 2000); print "drained" when it is empty; run until
                        SIGTERM (orderly stop) or SIGKILL
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path

from appliance.telemetry import Telemetry
from tests.appliance.store_rig import open_store
from tests.appliance.telemetry_helpers import LINE, SITE, record, telemetry_cfg


def _wait(predicate: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    mode, db, port = argv[0], Path(argv[1]), int(argv[2])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    overrides: dict[str, float] = {"metrics_interval_s": 3600.0}
    if mode == "drain" and len(argv) > 3:
        overrides["backlog_rate_per_s"] = float(argv[3])
    store = open_store(db.parent, path=db)
    telemetry = Telemetry(telemetry_cfg(port, **overrides), store, site=SITE, line=LINE)
    telemetry.start()

    def depth() -> int:
        stats = telemetry.stats()
        return -1 if stats is None else stats.outbox_depth

    if mode == "enqueue":
        n = int(argv[3])
        for i in range(n):
            telemetry.on_verdict(record(i))
        if not _wait(lambda: depth() == n, 30.0):
            print(f"outbox depth {depth()} != {n}", flush=True)
            return 1
        print("ready", flush=True)
        stop.wait(60.0)  # the test kills us long before
        return 1
    if not _wait(lambda: depth() == 0, 60.0):
        print(f"outbox depth still {depth()}", flush=True)
        return 1
    print("drained", flush=True)
    stop.wait(60.0)
    telemetry.stop()
    store.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
