"""When the appliance raises which alarm: pure rules over a snapshot of its state, and the
monitor that polls them every second and keeps the alarm book (alarms.py) in step.

`evaluate(inputs, cfg)` maps an `AlarmInputs` snapshot to the alarms that should be
active now, `{(code, station): (severity, message)}`; the table (codes as in the
`status` topic where one exists, see docs/operations.md):

    code                 per station  severity  active while
    camera_lost          yes          critical  that station's source is `lost`
    no_model             -            critical  no model is loaded
    engine_cpu_fallback  -            warning   the engine fell back from GPU to CPU, or
                                                runs on CPU though a GPU provider is
                                                configured first
    uninspected_parts    -            warning   >= `uninspected_min_parts` parts were
                                                uninspected in the last
                                                `uninspected_window_s` (counts by reason)
    disk_low             -            warning   free disk under the image floor
    disk_near_quota      -            warning   kept fail + pinned images fill
                                                `disk_near_quota_fraction` of the quota,
                                                or free disk under
                                                `disk_near_floor_factor` x the floor
    store_unwritable     -            critical  verdicts cannot be committed
    store_reserve_used   -            warning   the database's disk reserve is released
    falling_behind       -            warning   the line produces more than is judged
    broker_offline       -            warning   the broker unreachable for
                                                `broker_offline_after_s` and the outbox
                                                grew within `outbox_window_s`

Invariants of `AlarmMonitor`: it raises an alarm when its condition appears and clears
it when the condition is gone (never once a second while it lasts); an alarm another
component already raised is left as it is (no second event, no count bump); at its
first poll it adopts the active alarms of its codes left by a previous run, so one whose
condition is over is cleared. It never raises into the caller: a store error is logged and the next
poll tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from appliance.alarms import AlarmBook, AlarmSeverity
from appliance.errors import ApplianceError
from appliance.store.images import disk_free_bytes

if TYPE_CHECKING:
    from appliance.config import EngineConfig
    from appliance.pipeline.stats import PipelineStats
    from appliance.store import Store
    from appliance.telemetry.publisher import PublisherStats

logger = logging.getLogger(__name__)

EVALUATED_CODES = ("camera_lost", "no_model", "engine_cpu_fallback", "uninspected_parts",
                   "disk_low", "disk_near_quota", "store_unwritable", "store_reserve_used",
                   "falling_behind", "broker_offline")
"""The codes `evaluate` owns (others, e.g. drift, are raised by their own components).
Some of them are also raised by the component that sees the condition first (the store:
`disk_low`, `store_reserve_used`, `store_unwritable`; the falling-behind monitor; a
model that cannot load at start): the monitor then finds the alarm active and leaves it
as it is (one alarm, one event)."""

RAISED_BY_THE_STORE_ONLY = frozenset({"store_unwritable"})
"""Codes the monitor ends (left over by a previous run) but never raises: while the store
cannot commit, no alarm can be written, and the store raises this one itself, dated
when the outage began, in the first batch it commits again (appliance/store/outage.py);
a raise queued by the monitor would land after that and open a second occurrence."""

AlarmKey = tuple[str, str | None]
Condition = tuple[AlarmSeverity, str]


class AlarmRulesConfig(BaseModel):
    """When the appliance raises the alarms the operator panel shows (see
    appliance/alarm_rules.py and docs/operations.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    """Evaluate the rules (False: only alarms raised by other components are recorded)."""
    poll_interval_s: float = Field(1.0, ge=0.1, le=60.0)
    """How often the rules are evaluated."""
    uninspected_window_s: float = Field(60.0, ge=1.0, le=3600.0)
    """`uninspected_parts` looks at the parts uninspected within this window."""
    uninspected_min_parts: int = Field(1, ge=1, le=1_000_000)
    """...and is raised once at least this many were."""
    disk_near_quota_fraction: float = Field(0.9, gt=0.0, le=1.0)
    """`disk_near_quota` when kept `fail` and pinned images use this fraction of
    `store.images.quota_bytes` (beyond it, `fail` images start to be evicted)..."""
    disk_near_floor_factor: float = Field(1.5, ge=1.0, le=100.0)
    """...or free disk is under this many times `store.images.min_free_disk_bytes`."""
    broker_offline_after_s: float = Field(30.0, ge=0.0, le=86_400.0)
    """`broker_offline` once the broker has been unreachable this long..."""
    outbox_window_s: float = Field(60.0, ge=1.0, le=3600.0)
    """...and the telemetry outbox grew within this window."""


@dataclass(frozen=True)
class AlarmInputs:
    """What the rules look at: one reading of the appliance's state (sizes in bytes,
    durations in seconds). The `*_recent` / `*_growth` fields are filled by the monitor
    from successive readings."""

    sources: Mapping[str, str] = field(default_factory=dict)
    """station -> source state (`streaming`, `lost`, ...)."""
    model_loaded: bool = True
    active_provider: str | None = None
    """The execution provider the model runs on (ORT name), None without a model."""
    wanted_provider: str | None = None
    """The first configured provider (`engine.providers[0]`), None: automatic."""
    gpu_fallbacks: int = 0
    uninspected_total: Mapping[str, int] = field(default_factory=dict)
    """Uninspected parts by reason since start (cumulative)."""
    uninspected_recent: Mapping[str, int] = field(default_factory=dict)
    """...of which within the last `uninspected_window_s`."""
    falling_behind: str | None = None
    """The `falling_behind` description while behind, else None."""
    images_protected_bytes: int = 0
    images_quota_bytes: int = 0
    free_disk_bytes: int | None = None
    min_free_disk_bytes: int = 0
    store_unwritable: bool = False
    reserve_released: bool = False
    broker_connected: bool | None = None
    """None: telemetry is off."""
    broker_down_s: float = 0.0
    """How long the broker has been unreachable (filled by the monitor)."""
    outbox_depth: int | None = None
    outbox_growth: int = 0
    """Rows the outbox gained within the last `outbox_window_s` (0 if it did not grow)."""


def is_cpu(provider: str) -> bool:
    return provider.lower() in ("cpu", "cpuexecutionprovider")


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def evaluate(inputs: AlarmInputs, cfg: AlarmRulesConfig) -> dict[AlarmKey, Condition]:
    """The alarms that should be active for `inputs` (pure; see the module's table)."""
    out: dict[AlarmKey, Condition] = {}
    for station, state in sorted(inputs.sources.items()):
        if state == "lost":
            out[("camera_lost", station)] = (
                "critical", f"camera of station {station} lost: its parts are not inspected")
    if not inputs.model_loaded:
        out[("no_model", None)] = ("critical", "no model loaded: every part is uninspected")
    elif inputs.active_provider is not None and (
            inputs.gpu_fallbacks > 0 or (inputs.wanted_provider is not None
                                         and not is_cpu(inputs.wanted_provider)
                                         and is_cpu(inputs.active_provider))):
        why = (f"after {inputs.gpu_fallbacks} GPU failure(s)" if inputs.gpu_fallbacks
               else f"although {inputs.wanted_provider} is configured")
        out[("engine_cpu_fallback", None)] = (
            "warning", f"inference runs on CPU {why}: slower, parts may go uninspected")
    recent = {r: n for r, n in sorted(inputs.uninspected_recent.items()) if n > 0}
    if sum(recent.values()) >= cfg.uninspected_min_parts:
        reasons = ", ".join(f"{r} {n}" for r, n in recent.items())
        out[("uninspected_parts", None)] = (
            "warning", f"{sum(recent.values())} parts uninspected in the last "
                       f"{cfg.uninspected_window_s:g} s ({reasons}): treat them as rejects")
    free, floor = inputs.free_disk_bytes, inputs.min_free_disk_bytes
    if free is not None and free < floor:
        out[("disk_low", None)] = (
            "warning", f"free disk {_mib(free)} under the floor {_mib(floor)}: "
                       "no images are kept")
    elif free is not None and floor > 0 and free < floor * cfg.disk_near_floor_factor:
        out[("disk_near_quota", None)] = (
            "warning", f"free disk {_mib(free)} is near the floor {_mib(floor)}")
    quota = inputs.images_quota_bytes
    if quota > 0 and inputs.images_protected_bytes >= quota * cfg.disk_near_quota_fraction \
            and ("disk_near_quota", None) not in out:
        out[("disk_near_quota", None)] = (
            "warning", f"fail and labelled images use {_mib(inputs.images_protected_bytes)} "
                       f"of the {_mib(quota)} image quota: older fail images will be deleted")
    if inputs.store_unwritable:
        out[("store_unwritable", None)] = (
            "critical", "the store cannot commit verdicts (disk full): parts are uninspected")
    if inputs.reserve_released:
        out[("store_reserve_used", None)] = (
            "warning", "the database's disk reserve is in use: free space on the data disk")
    if inputs.falling_behind is not None:
        out[("falling_behind", None)] = ("warning", inputs.falling_behind)
    if inputs.broker_connected is False and \
            inputs.broker_down_s >= cfg.broker_offline_after_s and inputs.outbox_growth > 0:
        out[("broker_offline", None)] = (
            "warning", f"MQTT broker unreachable for {inputs.broker_down_s:.0f} s; "
                       f"{inputs.outbox_depth or 0} messages wait in the outbox "
                       f"(+{inputs.outbox_growth} in {cfg.outbox_window_s:g} s)")
    return out


class _Recent:
    """Cumulative readings over a sliding window (monotonic seconds)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, Mapping[str, int]]] = deque()

    def delta(self, now: float, totals: Mapping[str, int]) -> dict[str, int]:
        """How much each total grew since the oldest sample within the window."""
        self._samples.append((now, dict(totals)))
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()
        base = self._samples[0][1]
        return {k: v - base.get(k, 0) for k, v in totals.items() if v > base.get(k, 0)}


class AlarmMonitor:
    """Polls `read()` every `cfg.poll_interval_s` on its own thread and raises or clears
    the book's alarms (see the module docstring). `read` returns None while there is
    nothing to judge (not started)."""

    def __init__(self, cfg: AlarmRulesConfig, book: AlarmBook,
                 read: Callable[[], AlarmInputs | None],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._cfg = cfg
        self._book = book
        self._read = read
        self._monotonic = monotonic
        self._uninspected = _Recent(cfg.uninspected_window_s)
        self._outbox = _Recent(cfg.outbox_window_s)
        self._raised: set[AlarmKey] | None = None  # None until the first poll adopts
        self._down_since: float | None = None  # the broker, monotonic
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def book(self) -> AlarmBook:
        return self._book

    def start(self) -> None:
        if self._cfg.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="alarm-rules",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self._cfg.poll_interval_s):
            self.poll()

    def poll(self) -> dict[AlarmKey, Condition] | None:
        """One evaluation: returns the conditions found (None if nothing to read or the
        store failed). Called by the thread; tests call it directly."""
        try:
            inputs = self._read()
            if inputs is None:
                return None
            now = self._monotonic()
            depth = inputs.outbox_depth
            if inputs.broker_connected is False:
                self._down_since = now if self._down_since is None else self._down_since
            else:
                self._down_since = None
            inputs = replace(
                inputs,
                broker_down_s=0.0 if self._down_since is None else now - self._down_since,
                uninspected_recent=self._uninspected.delta(now, inputs.uninspected_total),
                outbox_growth=0 if depth is None else
                self._outbox.delta(now, {"rows": depth}).get("rows", 0))
            wanted = evaluate(inputs, self._cfg)
            if self._raised is None:
                self._raised = {(a.code, a.station) for a in self._book.active()
                                if a.code in EVALUATED_CODES}
            for key in sorted(set(wanted) - self._raised, key=str):
                if key[0] in RAISED_BY_THE_STORE_ONLY:
                    continue
                severity, message = wanted[key]
                # bump=False: its owner may have raised it already (with more facts)
                self._book.raise_alarm(key[0], message, station=key[1], severity=severity,
                                       bump=False)
                self._raised.add(key)
            for key in sorted(self._raised - set(wanted), key=str):
                self._book.clear(key[0], key[1])
                self._raised.discard(key)
            return wanted
        except ApplianceError as e:
            logger.error("alarm rules: %s (retrying at the next poll)", e)
            return None


def alarm_inputs(stats: PipelineStats, store: Store, engine: EngineConfig,
                 telemetry: PublisherStats | None) -> AlarmInputs:
    """An `AlarmInputs` reading from the App's collaborators (the adapter; IO: the store's
    counters and the free disk under the images)."""
    store_stats = store.stats()
    images = store.config.images
    try:
        free: int | None = disk_free_bytes(images.dir if images.dir.exists()
                                           else store.config.path.parent)
    except OSError as e:
        logger.warning("cannot read free disk space under %s: %s", images.dir, e)
        free = None
    return AlarmInputs(
        sources={name: str(s.state) for name, s in stats.stations.items()},
        model_loaded=stats.model is not None,
        active_provider=stats.providers[0] if stats.providers else None,
        wanted_provider=engine.providers[0] if engine.providers else None,
        gpu_fallbacks=stats.engine_fallbacks,
        uninspected_total=dict(stats.uninspected),
        falling_behind=stats.behind.describe() if stats.behind and stats.behind.active
        else None,
        images_protected_bytes=store_stats.images_protected_bytes,
        images_quota_bytes=images.quota_bytes,
        free_disk_bytes=free,
        min_free_disk_bytes=images.min_free_disk_bytes,
        store_unwritable=store_stats.unwritable,
        reserve_released=store.config.reserve_bytes > 0 and not store_stats.reserve_held,
        broker_connected=None if telemetry is None else telemetry.connected,
        outbox_depth=None if telemetry is None else telemetry.outbox_depth,
    )
