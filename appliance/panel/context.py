"""Everything the panel's routes use, built once at start (panel/wiring.py) and passed in
(no collaborator is hung on the FastAPI app or read back from `request.app`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.panel.config import PanelConfig
from appliance.panel.live import LiveFrames
from appliance.panel.ports import (
    AlarmDesk,
    LabelDesk,
    MetricsExporter,
    NoRollback,
    RollbackControl,
    UserDirectory,
)
from appliance.panel.sessions import RateLimiter, Sessions
from appliance.pipeline.engine import LoadedModel
from appliance.pipeline.thresholds import ThresholdOverrides
from appliance.readiness import Readiness
from appliance.records import EventValue, Severity

RecordEvent = Callable[..., None]
"""`Events.record(kind, severity, source, message, **data)`."""


def _no_event(kind: str, severity: Severity, source: str, message: str,
              **data: EventValue) -> None:
    return None


@dataclass
class PanelContext:
    """The panel's collaborators. `model()` is the model judging now (None: none);
    `readiness()` is the App's readiness (model, store); `clock` is unix seconds."""

    cfg: PanelConfig
    db_path: Path
    images_dir: Path
    stations: tuple[str, ...]
    live: LiveFrames
    users: UserDirectory
    alarms: AlarmDesk
    labels: LabelDesk
    exporter: MetricsExporter
    readiness: Callable[[], Readiness]
    model: Callable[[], LoadedModel | None]
    thresholds: ThresholdOverrides
    rollback: RollbackControl = field(default_factory=NoRollback)
    record_event: RecordEvent = _no_event
    clock: Callable[[], float] = time.time
    mono: Callable[[], float] = time.monotonic
    sessions: Sessions = field(init=False)
    client_limit: RateLimiter = field(init=False)
    user_limit: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.cfg
        self.sessions = Sessions(lifetime_s=cfg.session_lifetime_s,
                                 max_sessions=cfg.max_sessions, clock=self.clock)
        self.client_limit = RateLimiter(limit=cfg.login_limit.per_client,
                                        window_s=cfg.login_limit.window_s, mono=self.mono)
        self.user_limit = RateLimiter(limit=cfg.login_limit.per_user,
                                      window_s=cfg.login_limit.window_s, mono=self.mono)
