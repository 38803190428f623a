"""Rigs of the panel tests.

- `PanelRig`: a real Store (SQLite file, writer thread) with verdicts and kept images, the
  real user/alarm/label books over it, and the panel served by uvicorn on 127.0.0.1 (port
  0), without a pipeline: for the API tests.
- `SwitchableSim`: the simulated line behind a power switch (a camera that can be unplugged
  and plugged back), for the App-level tests (readiness, alarms, the browser tests).
- `panel_app_config`: an appliance on the simulated line with the demo bundle and the
  panel on a free port.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from argon2 import PasswordHasher

from appliance.alarms import AlarmBook
from appliance.config import ApplianceConfig, load_config
from appliance.errors import SourceLost
from appliance.labels import LabelBook
from appliance.panel.config import PanelConfig
from appliance.panel.context import PanelContext
from appliance.panel.live import LiveFrames
from appliance.panel.ports import NoRollback, RollbackControl
from appliance.panel.server import PanelServer
from appliance.panel.web import create_app
from appliance.pipeline.engine import LoadedModel
from appliance.pipeline.thresholds import ThresholdOverrides
from appliance.readiness import Readiness
from appliance.records import DefectRecord, EventRecord, EventValue, InspectionRecord
from appliance.store import Store
from appliance.users import UserBook
from tests.appliance.store_rig import open_store

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
OPERATOR = ("olga", "operator-pass-1")
ENGINEER = ("erik", "engineer-pass-1")
CLASSES = ("dent", "scratch", "stain")


class Clock:
    """A settable unix clock (session expiry)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fail_record(i: int, *, station: str = "cam", judged_at: float,
                classes: tuple[str, ...] = ("dent",), image: bool = True) -> InspectionRecord:
    img = np.full((60, 80, 3), 40 + i % 200, dtype=np.uint8)
    defects = tuple(DefectRecord(CLASSES.index(c), c, 0.9 - 0.1 * k,
                                 (10.0 + k, 10.0, 30.0 + k, 28.0))
                    for k, c in enumerate(classes))
    return InspectionRecord(
        frame_id=f"{station}:{i}", station=station, part_id=str(i), captured_at=judged_at - 0.02,
        judged_at=judged_at, verdict="fail" if defects else "pass", reason=None,
        model_version="tiny:1", preprocess_hash="pp-hash-1",
        latency_ms={"total": 20.0 + i}, defects=defects, image_bgr=img if image else None)


class PanelRig:
    """See the module docstring. `client(role)` logs in and returns an httpx client."""

    def __init__(self, root: Path, *, cfg: PanelConfig | None = None,
                 readiness: Callable[[], Readiness] | None = None,
                 model: Callable[[], LoadedModel | None] | None = None,
                 rollback: RollbackControl | None = None, clock: Clock | None = None) -> None:
        self.root = root
        self.store: Store = open_store(root, flush_interval_ms=10)
        self.users = UserBook(self.store, hasher=FAST)
        self.alarms = AlarmBook(self.store)
        self.labels = LabelBook(self.store, CLASSES)
        self.events: list[EventRecord] = []
        self.clock = clock or Clock(time.time())
        self.live = LiveFrames(rate_hz=10.0)
        self.thresholds = ThresholdOverrides(root / "thresholds.json")
        self.ctx = PanelContext(
            cfg=cfg or PanelConfig(port=0), db_path=self.store.path,
            images_dir=root / "images", stations=("cam", "side"), live=self.live,
            users=self.users, alarms=self.alarms, labels=self.labels,
            exporter=_TextExporter(), readiness=readiness or (lambda: Readiness(True)),
            model=model or (lambda: None), thresholds=self.thresholds,
            rollback=rollback or NoRollback(), record_event=self._record, clock=self.clock)
        self.server = PanelServer(self.ctx.cfg, create_app(self.ctx))
        self.server.start()
        self._clients: list[httpx.Client] = []

    def _record(self, kind: str, severity: Any, source: str, message: str,
                **data: EventValue) -> None:
        event = EventRecord(self.clock(), kind, severity, source, message, data)
        self.events.append(event)
        self.store.record_event(event)

    def add_users(self) -> None:
        self.users.add(*OPERATOR[:1], "operator", OPERATOR[1])
        self.users.add(*ENGINEER[:1], "engineer", ENGINEER[1])

    def submit(self, records: list[InspectionRecord]) -> None:
        for r in records:
            self.store.submit(r)
            self.live.offer(r)
        self.store.flush()

    def anonymous(self) -> httpx.Client:
        client = httpx.Client(base_url=self.server.url, timeout=10.0)
        self._clients.append(client)
        return client

    def client(self, who: tuple[str, str] = OPERATOR) -> httpx.Client:
        client = self.anonymous()
        r = client.post("/login", data={"username": who[0], "password": who[1]})
        assert r.status_code == 303 and r.headers["location"] == "/live", r.text
        csrf = client.get("/api/session").json()["csrf_token"]
        client.headers["X-CSRF-Token"] = csrf
        return client

    def close(self) -> None:
        for c in self._clients:
            c.close()
        self.server.stop()
        self.store.stop()


class _TextExporter:
    def render(self) -> tuple[bytes, str]:
        return b"lineguard_test_total 1\n", "text/plain; version=0.0.4; charset=utf-8"


class SwitchableSim:
    """The simulated line (linesim) with a power switch: `off()` unplugs the camera
    (reads and reopens fail with SourceLost), `on()` plugs it back."""

    def __init__(self, width_px: int = 160, height_px: int = 120, fps: float = 10.0) -> None:
        from appliance.capture.config import SimSourceConfig
        from appliance.capture.sim import SimulatedLineSource
        cfg = SimSourceConfig(station="cam", width_px=width_px, height_px=height_px,
                              parts_per_minute=fps * 60.0, realtime=True)
        self._inner = SimulatedLineSource(cfg.line_config(), realtime=True)
        self.powered = threading.Event()
        self.powered.set()

    def off(self) -> None:
        self.powered.clear()

    def on(self) -> None:
        self.powered.set()

    def open(self) -> None:
        if not self.powered.is_set():
            raise SourceLost("test: camera unplugged")
        self._inner.open()

    def read(self) -> tuple[Any, str | None, float | None]:
        if not self.powered.is_set():
            raise SourceLost("test: camera unplugged")
        return self._inner.read()

    def close(self) -> None:
        self._inner.close()


class RunningApp:
    """An App on `SwitchableSim` with the panel, started (`app.start`) and stopped."""

    def __init__(self, root: Path, users: bool = True, **panel: Any) -> None:
        from appliance.app import App
        from appliance.store import Store
        self.cfg = panel_app_config(root, **panel)
        if users:  # accounts exist before the appliance starts (the CLI's job)
            with Store(self.cfg.store) as store:
                book = UserBook(store, hasher=FAST)
                book.add(OPERATOR[0], "operator", OPERATOR[1])
                book.add(ENGINEER[0], "engineer", ENGINEER[1])
        self.camera = SwitchableSim()
        self.app = App(self.cfg, sources={"cam": self.camera})
        self.app.start()
        assert self.app.panel is not None
        self.url = self.app.panel.url
        self._clients: list[httpx.Client] = []

    def client(self, who: tuple[str, str] | None = OPERATOR) -> httpx.Client:
        client = httpx.Client(base_url=self.url, timeout=10.0)
        self._clients.append(client)
        if who is not None:
            r = client.post("/login", data={"username": who[0], "password": who[1]})
            assert r.status_code == 303 and r.headers["location"] == "/live", r.text
            client.headers["X-CSRF-Token"] = client.get("/api/session").json()["csrf_token"]
        return client

    def stop(self) -> None:
        for c in self._clients:
            c.close()
        self.camera.on()
        self.app.stop(5.0)


def panel_app_config(root: Path, **panel: Any) -> ApplianceConfig:
    return load_config(None, {
        "data_dir": str(root / "data"),
        "stations": [{"name": "cam", "source": {
            "kind": "sim", "width_px": 160, "height_px": 120,
            "reconnect": {"initial_s": 0.05, "max_s": 0.2}}}],
        "engine": {"intra_op_threads": 1},
        "pipeline": {"max_batch": 2},
        "store": {"flush_interval_ms": 20, "images": {"min_free_disk_bytes": 0}},
        "panel": {"port": 0, "ready_verdict_age_s": 2.0, **panel},
    })


def wait_for(condition: Callable[[], Any], timeout_s: float = 10.0,
              what: str = "condition") -> Any:
    """Poll `condition` until truthy (bounded); returns its value. Raises AssertionError."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)
