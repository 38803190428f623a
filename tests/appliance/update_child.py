"""An appliance process for the crash test: `python -m tests.appliance.update_child
CONFIG.yaml`. It starts the App (a bundle labelled crash-on-load kills it while loading),
waits until the update agent finished its first check, stops in order and exits 0."""

from __future__ import annotations

import sys
from pathlib import Path

from appliance.app import App
from appliance.capture import ReplaySource
from appliance.config import load_config
from tests.appliance.pipeline_helpers import WHITE
from tests.appliance.update_rig import label_factory, wait_until


def main(argv: list[str]) -> int:
    cfg = load_config(Path(argv[0]))
    app = App(cfg, sources={"cam": ReplaySource([WHITE], max_fps=80.0)},
              detector_factory=label_factory())
    app.start()
    try:
        agent = app.updates.agent if app.updates is not None else None
        assert agent is not None
        wait_until(lambda: agent.checks >= 1, 60, "the first update check")
    finally:
        app.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
