"""An appliance process that hot-swaps its model in a loop, for the SIGTERM-during-a-swap
fault test (run as `python -m tests.appliance.fault_child CONFIG BUNDLE...`).

It runs `App.run` like `lineguard appliance run` (SIGTERM sets the stop event), while a
thread swaps between the given bundles; it prints "swapping" once the first swap began,
and at the end the run summary as JSON. Exit 0 after an orderly stop.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path

from appliance.app import App
from appliance.config import load_config
from appliance.errors import ApplianceError
from models.errors import ModelError


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    cfg = load_config(Path(argv[0]))
    bundles = [Path(p) for p in argv[1:]]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    app = App(cfg)
    swaps = 0

    def swap_loop() -> None:
        nonlocal swaps
        while not stop.is_set():
            if app.pipeline is None:
                stop.wait(0.05)
                continue
            print("swapping", flush=True)
            try:
                app.swap_model(bundles[swaps % len(bundles)])
            except (ApplianceError, ModelError) as e:
                print(f"swap refused: {e}", file=sys.stderr, flush=True)
                return
            swaps += 1

    swapper = threading.Thread(target=swap_loop, name="swapper")
    swapper.start()
    try:
        summary = app.run(stop, status_interval_s=3600.0)
    finally:
        stop.set()
        swapper.join()
    print(json.dumps({**summary.as_dict(), "swaps": swaps}, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
