"""The live frame tap: the latest judged frame of every station, for the live view.

Invariants:
- `offer(record)` is a verdict sink: it runs in the thread that closed the frame and
  does one dict store under a lock (a reference swap) and notes the time of the last
  real verdict (for /readyz), nothing else: no copy, no encode;
- JPEG encoding (and the JSON the live view sends) happens lazily in the reader's
  thread (`latest`), at most once per station every `1 / rate_hz` seconds: readers in
  between share the cached result, so five clients cost one encode per interval, not five;
- the holder is bounded: one record per station (stations are named in the config).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2

from appliance.records import InspectionRecord


@dataclass(frozen=True, slots=True)
class LiveFrame:
    """One station's latest frame as the live view shows it: `seq` grows with every new
    record (a client polls `?after=seq`); `jpeg` is the encoded image (None: the frame had
    no image, e.g. `uninspected` without one); `json` is what /api/live sends for it,
    serialized once per encode, whatever the number of viewers."""

    seq: int
    record: InspectionRecord
    jpeg: bytes | None
    width_px: int
    height_px: int
    json: str = ""


def live_json(seq: int, record: InspectionRecord, jpeg: bytes | None, width_px: int,
              height_px: int) -> str:
    """The live view's JSON object for one frame (the JPEG base64-encoded, so picture and
    boxes always arrive together)."""
    return json.dumps({
        "seq": seq, "frame_id": record.frame_id, "verdict": record.verdict,
        "reason": record.reason, "judged_at": record.judged_at,
        "model_version": record.model_version, "width_px": width_px, "height_px": height_px,
        "defects": [{"class_name": d.class_name, "score": round(d.score, 3),
                     "box_xyxy": d.box_xyxy} for d in record.defects],
        "jpeg_b64": base64.b64encode(jpeg).decode() if jpeg else None,
    })


class LiveFrames:
    """See the module docstring. `mono` is a monotonic clock (seconds)."""

    def __init__(self, *, rate_hz: float = 10.0, jpeg_quality: int = 80,
                 mono: Callable[[], float] = time.monotonic) -> None:
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
        self._interval_s = 1.0 / rate_hz
        self._quality = int(jpeg_quality)
        self._mono = mono
        self._lock = threading.Lock()
        self._latest: dict[str, tuple[int, InspectionRecord]] = {}
        self._encoded: dict[str, tuple[float, LiveFrame]] = {}
        self._encode_lock = threading.Lock()
        self._seq = 0
        self._last_verdict: float | None = None
        self.closed = False
        """Set by `close` (the panel stops): live streams end."""
        self.encodes = 0

    def offer(self, record: InspectionRecord) -> None:
        """Verdict sink: remember `record` as its station's latest (a reference swap)."""
        with self._lock:
            self._seq += 1
            self._latest[record.station] = (self._seq, record)
        if record.verdict != "uninspected":
            self._last_verdict = self._mono()

    def last_verdict_age_s(self) -> float | None:
        """Seconds since the last `pass` or `fail` (None: none yet); `uninspected`
        records do not count: they prove no part was judged."""
        last = self._last_verdict
        return None if last is None else max(0.0, self._mono() - last)

    @property
    def interval_s(self) -> float:
        """The live rate's interval: how often a stream looks for a new frame."""
        return self._interval_s

    def close(self) -> None:
        self.closed = True

    def stations(self) -> list[str]:
        with self._lock:
            return sorted(self._latest)

    def latest(self, station: str) -> LiveFrame | None:
        """The station's latest frame, encoded at most at the live rate (a frame newer
        than the cached one replaces it once the interval has passed). None if the
        station has had no frame yet."""
        with self._lock:
            current = self._latest.get(station)
        if current is None:
            return None
        now = self._mono()
        with self._encode_lock:
            cached = self._encoded.get(station)
            if cached is not None and (cached[1].seq == current[0]
                                       or now - cached[0] < self._interval_s):
                return cached[1]
            frame = self._encode(*current)
            self._encoded[station] = (now, frame)
            return frame

    def _encode(self, seq: int, record: InspectionRecord) -> LiveFrame:
        image = record.image_bgr
        if image is None or image.size == 0:
            return LiveFrame(seq, record, None, 0, 0, live_json(seq, record, None, 0, 0))
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self._quality])
        self.encodes += 1
        height, width = int(image.shape[0]), int(image.shape[1])
        jpeg = bytes(buf) if ok else None
        return LiveFrame(seq, record, jpeg, width, height,
                         live_json(seq, record, jpeg, width, height))
