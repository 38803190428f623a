"""The drift monitor: stores each line's drift windows, runs one detector per line,
station and model version, and turns a confirmed drift into an alert.

Invariants:
- one window is processed in one database transaction (window row, detector state,
  alert row), so a crash never half-applies it and a re-delivered window (same msg_id,
  or frames already seen) changes nothing;
- the detector's baseline comes from the bundle's reference when `references` has one
  for the model, else from the first `line_reference_frames` frames the windows sample
  on the line (recorded as `reference_source` = `line`);
- an alert is published to the line (`cmd/alert`) and `request_retrain` is called
  once per alert, after the commit; the detector stays latched until the alert is
  acknowledged (`acknowledge`), so a lasting drift is one alert, not one per window.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine

from cloud.drift import persist
from cloud.drift.config import DriftConfig
from cloud.drift.detector import (
    Alert,
    Baseline,
    DetectorConfig,
    DetectorError,
    DetectorState,
    DriftDetector,
    Window,
    build_baseline,
    min_reference_frames,
)
from cloud.drift.store import (
    AlertRow,
    DetectorKey,
    DetectorRow,
    DriftStore,
    add_window,
    insert_alert,
    load_detector,
    save_detector,
    set_window_statistic,
    window_start_ms,
)
from models.drift.reference import DriftReference
from protocol.alerts import AlertCommand
from protocol.drift import DriftSketchV2
from protocol.fields import ModelRef, new_msg_id

logger = logging.getLogger(__name__)

ReferenceSource = Callable[[ModelRef], DriftReference | None]
PublishAlert = Callable[[AlertCommand], bool]
# The retraining hook (cloud/retrain: `RetrainQueue.request_retrain("site/line", reason)`).
RequestRetrain = Callable[[str, str], object]
NO_STATION = "-"


def detector_config(cfg: DriftConfig) -> DetectorConfig:
    return DetectorConfig(
        false_alarms_per_10k=cfg.false_alarms_per_10k, allowance=cfg.allowance,
        phase1_quantile=cfg.phase1_quantile, channel_allowance=cfg.channel_allowance,
        bootstrap_replicates=cfg.bootstrap_replicates, block_frames=cfg.block_frames,
        mmd_alpha=cfg.mmd_alpha, mmd_permutations=cfg.mmd_permutations,
        confirm_windows=cfg.confirm_windows, channel_z=cfg.channel_z)


def _to_ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


class DriftMonitor:
    """See the module docstring. `ingest` is called from one thread per monitor."""

    def __init__(self, engine: Engine, config: DriftConfig, *,
                 references: ReferenceSource, publish: PublishAlert,
                 request_retrain: RequestRetrain | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._cfg = config
        self._detector_cfg = detector_config(config)
        self._references = references
        self._publish = publish
        self._request_retrain = request_retrain
        self._clock = clock
        self.store = DriftStore(engine)
        self._baselines: dict[DetectorKey, tuple[str, Baseline]] = {}
        self.counts = {"windows": 0, "duplicates": 0, "skipped": 0, "alerts": 0}

    def ingest(self, sketch: DriftSketchV2, received_at_ms: int | None = None) -> AlertRow | None:
        """Process one drift window; returns the alert it raised, if any."""
        now_ms = int(self._clock() * 1000)
        model = sketch.ref_model
        if model is None or sketch.image is None or sketch.frame_count == 0:
            self.counts["skipped"] += 1
            return None
        key = DetectorKey(sketch.site, sketch.line, sketch.station or NO_STATION,
                          model.name, model.version)
        alert: AlertRow | None = None
        with self._engine.begin() as conn:
            row = {
                "msg_id": sketch.msg_id, "first_frame_id": sketch.first_frame_id,
                "last_frame_id": sketch.last_frame_id, "frame_count": sketch.frame_count,
                "window_start_ms": _to_ms(sketch.window_start),
                "window_end_ms": _to_ms(sketch.window_end),
                "received_at_ms": received_at_ms or now_ms,
                "image_json": sketch.image.model_dump_json(),
                "output_json": sketch.output.model_dump_json() if sketch.output else None,
            }
            if not add_window(conn, key, row):
                self.counts["duplicates"] += 1
                return None
            self.counts["windows"] += 1
            found = load_detector(conn, key)
            det_row = found or self._new_detector(model, sketch)
            det_row, fired, statistic = self._step(key, det_row, sketch)
            if statistic is not None:
                set_window_statistic(conn, sketch.msg_id, statistic)
            if fired is not None:
                onset_ms = window_start_ms(conn, key, fired.onset_frame) or _to_ms(
                    sketch.window_start)
                alert = self._alert_row(key, fired, onset_ms, now_ms, sketch.msg_id)
                insert_alert(conn, alert)
            save_detector(conn, key, det_row, now_ms, exists=found is not None)
        if alert is not None:
            self.counts["alerts"] += 1
            self._announce(alert)
        return alert

    # ------------------------------------------------------------------ detector
    def _new_detector(self, model: ModelRef, sketch: DriftSketchV2) -> DetectorRow:
        line_ref = sketch.reference is not None and sketch.reference.source == "line"
        ref = None if line_ref else self._references(model)
        if ref is not None and ref.signals_version != sketch.signals_version:
            logger.warning("drift: bundle reference of %s v%d has signals %s, the line sends "
                           "%s; using the line's first frames", model.name, model.version,
                           ref.signals_version, sketch.signals_version)
            ref = None
        if ref is not None and sketch.image is not None and ref.names == sketch.image.names:
            try:
                base = build_baseline(ref.matrix(), tuple(ref.names), sketch.frame_count,
                                      self._detector_cfg, detections=ref.detections_array())
            except DetectorError as e:
                logger.warning("drift: bundle reference of %s v%d unusable (%s); using the "
                               "line's first frames", model.name, model.version, e)
            else:
                return DetectorRow("bundle", len(ref.frames), persist.baseline_to_json(base),
                                   persist.state_to_json(DetectorState(np.zeros(len(ref.names)))))
        # The line asked for a reference from its first N frames (refinement), or there is
        # no bundle reference: either way the line's sampled frames make the reference.
        target = sketch.reference.frames if line_ref and sketch.reference else 0
        return DetectorRow("line", 0, None, json.dumps(
            {"samples": [], "window_frames": [], "target_frames": target}))

    def _step(self, key: DetectorKey, row: DetectorRow, sketch: DriftSketchV2
              ) -> tuple[DetectorRow, Alert | None, float | None]:
        image = sketch.image
        if image is None:
            return row, None, None
        if row.baseline_json is None:
            return self._collect(key, row, sketch), None, None
        cached = self._baselines.get(key)
        if cached is None or cached[0] != row.baseline_json:
            cached = (row.baseline_json, persist.baseline_from_json(row.baseline_json))
            self._baselines[key] = cached
        baseline = cached[1]
        if tuple(image.names) != baseline.names:
            logger.warning("drift: %s/%s sends signals %s unlike its reference; skipped",
                           key.site, key.line, sketch.signals_version)
            return row, None, None
        seed = int(hashlib.sha256(repr(key).encode()).hexdigest()[:8], 16)
        det = DriftDetector(baseline, self._detector_cfg, seed=seed + sketch.last_frame_id,
                            state=persist.state_from_json(row.state_json))
        out = sketch.output
        detections = out.sums[0] / sketch.frame_count \
            if out is not None and out.names[0] == "detections" else None
        window = Window(sketch.frame_count, np.asarray(image.sums, np.float64),
                        np.asarray(image.samples, np.float64).reshape(-1, len(image.names)),
                        sketch.first_frame_id, sketch.last_frame_id + 1, detections)
        fired = det.update(window)
        new = DetectorRow(row.reference_source, row.reference_frames, row.baseline_json,
                          persist.state_to_json(det.state))
        return new, fired, det.state.last_statistic

    def _collect(self, key: DetectorKey, row: DetectorRow, sketch: DriftSketchV2) -> DetectorRow:
        """No baseline yet: keep the line's sampled frames until there are enough."""
        if sketch.image is None:
            return row
        data: dict[str, Any] = json.loads(row.state_json)
        data["samples"] += sketch.image.samples
        data["window_frames"].append(sketch.frame_count)
        data["names"] = list(sketch.image.names)
        target = int(data.get("target_frames") or 0)
        n = int(np.median(data["window_frames"]))
        # Never fewer than the detector needs for this window size (four windows' worth:
        # 1,200 sampled frames for the line's default 300-frame windows), so a baseline is
        # not attempted, refused and logged on every window until then.
        least = min_reference_frames(n)
        enough = (sum(data["window_frames"]) >= target and len(data["samples"]) >= least) \
            if target else len(data["samples"]) >= max(self._cfg.line_reference_frames, least)
        if not enough:
            return DetectorRow("line", len(data["samples"]), None, json.dumps(data))
        try:
            base: Baseline = build_baseline(np.asarray(data["samples"]), tuple(data["names"]),
                                            n, self._detector_cfg)
        except DetectorError as e:
            logger.warning("drift: %s/%s: line reference unusable: %s", key.site, key.line, e)
            return DetectorRow("line", len(data["samples"]), None, json.dumps(data))
        logger.info("drift: %s/%s %s v%d: reference from %d line frames, threshold %.2f",
                    key.site, key.line, key.model_name, key.model_version,
                    len(data["samples"]), base.threshold)
        return DetectorRow("line", len(data["samples"]), persist.baseline_to_json(base),
                           persist.state_to_json(DetectorState(np.zeros(len(base.names)))))

    # ------------------------------------------------------------------ alerts
    def _alert_row(self, key: DetectorKey, fired: Alert, onset_ms: int, now_ms: int,
                   msg_id: str) -> AlertRow:
        # The window that raised it is unique (msg_id is the windows' primary key).
        digest = hashlib.sha256(f"{key}|{msg_id}".encode()).hexdigest()
        return AlertRow(
            alert_id=f"drift-{digest[:16]}", site=key.site, line=key.line,
            station=key.station, model_name=key.model_name, model_version=key.model_version,
            channels=list(fired.channels), onset_frame_id=fired.onset_frame,
            onset_at_ms=onset_ms, raised_at_ms=now_ms, statistic=fired.statistic,
            threshold=fired.threshold, mmd_p_value=fired.mmd_p_value, published=False,
            retrain_requested=False, acknowledged_at_ms=None, acknowledged_by=None)

    def _announce(self, alert: AlertRow) -> None:
        """Publish the alert to the line and ask for retraining, once each."""
        names = [name for name, _ in alert.channels]
        text = (f"image drift on {alert.line} (model {alert.model_name} "
                f"v{alert.model_version}) since frame {alert.onset_frame_id}: "
                + (", ".join(names) if names else "several signals"))
        command = AlertCommand(
            msg_id=new_msg_id(), site=alert.site, line=alert.line,
            sent_at=datetime.fromtimestamp(self._clock(), UTC), alert_id=alert.alert_id,
            code="drift", severity=self._cfg.alert_severity,
            message=text[:1000],
            station=None if alert.station == NO_STATION else alert.station,
            model=ModelRef(name=alert.model_name, version=alert.model_version),
            channels=[n[:128] for n in names[:16]],
            began_at=datetime.fromtimestamp(alert.onset_at_ms / 1000, UTC),
            raised_at=datetime.fromtimestamp(alert.raised_at_ms / 1000, UTC),
            issued_by="drift-monitor")
        published = self._publish(command)
        retrain = False
        if self._request_retrain is not None and self._cfg.request_retrain:
            try:
                self._request_retrain(f"{alert.site}/{alert.line}",
                                      f"drift alert {alert.alert_id}: {text}")
                retrain = True
            except Exception:  # the hook is another component's: log, never lose the alert
                logger.exception("drift: request_retrain failed for %s", alert.alert_id)
        self.store.mark(alert.alert_id, published=published, retrain_requested=retrain)
        logger.warning("drift alert %s: %s (published %s, retrain %s)",
                       alert.alert_id, text, published, retrain)

    def acknowledge(self, alert_id: str, by: str) -> AlertRow | None:
        """See DriftStore.acknowledge."""
        return self.store.acknowledge(alert_id, by, int(self._clock() * 1000))
