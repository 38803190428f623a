"""The appliance's uploads, wired: the verdict listener, the sampler thread and the
uploader thread (docs/datasets.md, "The appliance side").

- `on_verdict` (a pipeline verdict listener) only asks the sampler (counting, no image
  work) and hands a sampled frame to a bounded in-memory queue without waiting; when
  that queue is full the frame is dropped and counted (`dropped_busy`). Inspection is
  never slowed.
- The sampler thread encodes each sampled frame as JPEG and queues it in the store
  (queue.py), and every `poll_s` turns settled operator-labelled frames into samples
  (operator.py).
- The uploader thread sends the oldest queued sample until the queue is empty, then
  waits for a new one (or `poll_s`). Answers are handled as client.py's table says:
  transport errors and 5xx back off (protocol/backoff.py) and retry the same sample
  with the same id; 401/403 raise the `upload_auth` alarm and retry every
  `auth_retry_s` (never a tight loop), clearing it after the next success.

Events: `upload_dropped` (the queue bound dropped the oldest samples; count),
`upload_rejected` (the cloud refused a sample for good; status). Both are warnings.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
from pydantic import ValidationError

from appliance.errors import StoreError, UnknownFrame
from appliance.records import EventRecord, InspectionRecord
from appliance.store import Store
from appliance.store.queries import open_reader
from appliance.uploads import operator
from appliance.uploads.client import SampleClient, model_ref, read_token, sample_meta
from appliance.uploads.config import UploadsConfig
from appliance.uploads.queue import QueuedSample, UploadQueue
from appliance.uploads.sampler import Sampler
from protocol.backoff import Backoff

logger = logging.getLogger(__name__)

AUTH_ALARM = "upload_auth"
Thresholds = Callable[[], Mapping[str, float]]
"""The active model's per-class score thresholds (class name -> threshold)."""


class AlarmSink(Protocol):
    """What the uploader needs of the alarm book (appliance/alarms.py `AlarmBook`)."""

    def raise_alarm(self, code: str, message: str, station: str | None = None,
                    severity: str = "warning") -> object: ...

    def clear(self, code: str, station: str | None = None) -> object: ...


@dataclass
class UploadStats:
    """Counters for the panel's /metrics and tests (since start)."""

    sampled: dict[str, int] = field(default_factory=Counter)
    """Samples queued by reason (random, near_threshold, rare_class, operator)."""
    sent: int = 0
    """Samples the cloud acknowledged (201 stored or 200 duplicate)."""
    failed: int = 0
    """Tries that failed (network, 5xx, 401/403); the sample stayed queued."""
    rejected: int = 0
    """Samples the cloud refused for good (4xx); dropped."""
    dropped_full: int = 0
    """Oldest samples dropped by the queue bound."""
    dropped_busy: int = 0
    """Sampled frames dropped because the encoder was behind (never waited for)."""
    queue_depth: int = 0
    queue_bytes: int = 0
    unauthorized: bool = False
    last_error: str | None = None


class Uploads:
    """See the module docstring. `thresholds` gives the active model's class thresholds;
    `alarms` the alarm book (None: events only)."""

    def __init__(self, cfg: UploadsConfig, store: Store, *, site: str, line: str,
                 spool_dir: Path, thresholds: Thresholds,
                 alarms: AlarmSink | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self._store = store
        self._site, self._line = site, line
        self._thresholds = thresholds
        self._alarms = alarms
        self._clock = clock
        self.sampler = Sampler(cfg)
        self.queue = UploadQueue(store, spool_dir, max_items=cfg.queue_max_items,
                                 max_bytes=cfg.queue_max_bytes, clock=clock)
        self._pending: queue.Queue[tuple[InspectionRecord, str]] = queue.Queue(cfg.pending_max)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stats = UploadStats()

    # ------------------------------------------------------------------ verdict path
    def on_verdict(self, record: InspectionRecord) -> None:
        """Verdict listener: decide, and hand a sampled frame over without waiting."""
        if record.image_bgr is None or record.verdict == "uninspected" or \
                model_ref(record.model_version) is None:
            return
        detections = [(d.class_name, float(d.score)) for d in record.defects]
        reason = self.sampler.decide(record.frame_id, detections, self._thresholds(),
                                     self._clock())
        if reason is None:
            return
        try:
            self._pending.put_nowait((record, reason))
        except queue.Full:
            with self._lock:
                self._stats.dropped_busy += 1

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Recover the spool, start both threads. Raises StoreError, OSError."""
        files, rows = self.queue.recover()
        if files or rows:
            logger.info("upload spool: %d stray file(s) deleted, %d sample(s) without "
                        "image dropped", files, rows)
        self._refresh_depth()
        for name, target in (("upload-sampler", self._sample_loop),
                             ("upload-sender", self._send_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop both threads (a request in flight ends by its timeout at the latest);
        what is queued stays for the next start."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []

    def stats(self) -> UploadStats:
        with self._lock:
            s = self._stats
            return UploadStats(dict(s.sampled), s.sent, s.failed, s.rejected, s.dropped_full,
                               s.dropped_busy, s.queue_depth, s.queue_bytes, s.unauthorized,
                               s.last_error)

    def wait_idle(self, timeout_s: float) -> bool:
        """Tests: wait until nothing is pending in memory and the queue is empty."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._pending.unfinished_tasks == 0 and self.queue.depth()[0] == 0:
                return True
            time.sleep(0.05)
        return False

    # ------------------------------------------------------------------ helpers
    def _event(self, kind: str, message: str, **data: str | int | None) -> None:
        try:
            self._store.record_event(EventRecord(self._clock(), kind, "warning", "uploads",
                                                 message, data))
        except (StoreError, ValueError) as e:
            logger.error("cannot record %s event: %s", kind, e)

    def _refresh_depth(self) -> None:
        try:
            items, size = self.queue.depth()
        except StoreError as e:
            logger.warning("upload queue depth: %s", e)
            return
        with self._lock:
            self._stats.queue_depth, self._stats.queue_bytes = items, size

    def _queue(self, sample_id: str, frame_id: str, reason: str, meta_json: str,
               jpeg: bytes) -> None:
        try:
            result = self.queue.add(sample_id, frame_id, reason, meta_json, jpeg,
                                    supersede=reason == "operator")
        except (StoreError, OSError) as e:
            logger.error("cannot queue sample %s: %s", sample_id, e)
            return
        with self._lock:
            if result.added:
                self._stats.sampled[reason] = self._stats.sampled.get(reason, 0) + 1
            self._stats.dropped_full += len(result.dropped)
        if result.dropped:
            self._event("upload_dropped",
                        f"upload queue full ({self.cfg.queue_max_items} samples / "
                        f"{self.cfg.queue_max_bytes} bytes): dropped the "
                        f"{len(result.dropped)} oldest", count=len(result.dropped),
                        first=result.dropped[0])
        self._refresh_depth()
        self._wake.set()

    # ------------------------------------------------------------------ sampler thread
    def _sample_loop(self) -> None:
        next_poll = 0.0
        while not self._stop.is_set():
            if self.cfg.operator_labels and time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self.cfg.poll_s
                try:
                    self._poll_labels()
                except (StoreError, OSError) as e:
                    logger.warning("operator labels: %s", e)
            try:
                record, reason = self._pending.get(timeout=min(self.cfg.poll_s, 0.5))
            except queue.Empty:
                continue
            try:
                self._sample_frame(record, reason)
            except Exception:  # one bad frame must not end sampling
                logger.exception("sampling %s failed", record.frame_id)
            finally:
                self._pending.task_done()

    def _sample_frame(self, record: InspectionRecord, reason: str) -> None:
        assert record.image_bgr is not None
        model = model_ref(record.model_version)
        assert model is not None
        ok, buf = cv2.imencode(".jpg", record.image_bgr,
                               [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
        if not ok:
            logger.warning("cannot encode %s as JPEG; not sampled", record.frame_id)
            return
        meta = sample_meta(record.frame_id, record.frame_id, record.captured_at, model,
                           reason, [(d.class_name, d.score, d.box_xyxy)
                                    for d in record.defects])
        self._queue(record.frame_id, record.frame_id, reason, meta, buf.tobytes())

    def _poll_labels(self) -> None:
        mark = self.queue.mark(operator.MARK)
        images_dir = self._store.config.images.dir
        conn = open_reader(self._store.path)
        try:
            ready, new_mark = operator.settled_frames(
                conn, mark, self._clock() - self.cfg.operator_settle_s)
            frames = []
            for frame_id, newest in ready:
                try:
                    frames.append(operator.labelled_frame(conn, frame_id, newest, images_dir))
                except UnknownFrame as e:
                    logger.warning("labelled frame %s: %s", frame_id, e)
        except Exception as e:
            raise StoreError(f"reading operator labels: {e}") from e
        finally:
            conn.close()
        for frame in frames:
            self._sample_labelled(frame)
        if new_mark != mark:
            self.queue.set_mark(operator.MARK, new_mark)

    def _sample_labelled(self, frame: operator.LabelledFrame) -> None:
        model = model_ref(frame.model_version)
        sample_id = f"{frame.frame_id}.op{frame.newest_label_id}"
        if model is None or frame.image_path is None:
            logger.warning("labelled frame %s has no %s; not uploaded", frame.frame_id,
                           "model version" if model is None else "kept image")
            return
        try:
            jpeg = frame.image_path.read_bytes()
            meta = sample_meta(sample_id, frame.frame_id, frame.captured_at_s, model,
                               "operator", frame.predictions, frame.labels)
        except (OSError, ValidationError) as e:
            logger.warning("labelled frame %s not uploaded: %s", frame.frame_id, e)
            return
        self._queue(sample_id, frame.frame_id, "operator", meta, jpeg)

    # ------------------------------------------------------------------ uploader thread
    def _send_loop(self) -> None:
        backoff = Backoff(self.cfg.backoff)
        client: SampleClient | None = None
        try:
            while not self._stop.is_set():
                sample = None
                try:
                    sample = self.queue.oldest()
                except StoreError as e:
                    logger.warning("upload queue: %s", e)
                if sample is None:
                    self._wake.wait(self.cfg.poll_s)
                    self._wake.clear()
                    continue
                if client is None:
                    try:
                        client = SampleClient(self.cfg.url, self._site, self._line,
                                              ca_file=self.cfg.ca_file,
                                              timeout_s=self.cfg.timeout_s)
                    except OSError as e:
                        self._failed(f"CA file {self.cfg.ca_file}: {e}")
                        if backoff.wait(self._stop):
                            return
                        continue
                try:
                    wait_s = self._send(client, sample, backoff)
                except StoreError as e:  # the store is stopping or failing: try later
                    logger.warning("upload queue: %s", e)
                    wait_s = backoff.next_delay_s()
                if wait_s is not None and self._stop.wait(wait_s):
                    return
        finally:
            if client is not None:
                client.close()

    def _failed(self, error: str) -> None:
        with self._lock:
            self._stats.failed += 1
            self._stats.last_error = error

    def _send(self, client: SampleClient, sample: QueuedSample, backoff: Backoff) -> float | None:
        """One try; returns how long to wait before the next (None: go on at once)."""
        try:
            jpeg = self.queue.image_bytes(sample)
        except OSError as e:
            logger.error("sample %s lost its image (%s); dropped", sample.sample_id, e)
            self.queue.remove(sample)
            self._refresh_depth()
            return None
        try:
            token = read_token(self.cfg.token_file)
        except (OSError, ValueError) as e:
            return self._unauthorized(sample, f"token file {self.cfg.token_file}: {e}")
        answer = client.post(token, sample.meta_json, jpeg)
        if answer.outcome == "sent":
            self.queue.remove(sample)
            backoff.reset()
            with self._lock:
                self._stats.sent += 1
                was_unauthorized, self._stats.unauthorized = self._stats.unauthorized, False
            if was_unauthorized and self._alarms is not None:
                self._clear_alarm()
            self._refresh_depth()
            return None
        if answer.outcome == "auth":
            return self._unauthorized(sample, f"HTTP {answer.status}: {answer.detail}")
        if answer.outcome == "rejected":
            logger.error("cloud refused sample %s (HTTP %s): %s; dropped", sample.sample_id,
                         answer.status, answer.detail)
            self.queue.remove(sample)
            with self._lock:
                self._stats.rejected += 1
                self._stats.last_error = f"HTTP {answer.status}: {answer.detail}"
            self._event("upload_rejected", f"the cloud refused sample {sample.sample_id} "
                        f"(HTTP {answer.status}); dropped", sample_id=sample.sample_id,
                        status=answer.status)
            self._refresh_depth()
            return None
        self._failed(answer.detail)
        self._try_note(sample, answer.detail)
        delay = backoff.next_delay_s()
        logger.info("upload of %s failed (%s); retry in %.1f s", sample.sample_id,
                    answer.detail, delay)
        return delay

    def _try_note(self, sample: QueuedSample, error: str) -> None:
        try:
            self.queue.tried(sample, error)
        except StoreError as e:
            logger.warning("upload queue: %s", e)

    def _unauthorized(self, sample: QueuedSample, error: str) -> float:
        self._failed(error)
        self._try_note(sample, error)
        with self._lock:
            first, self._stats.unauthorized = not self._stats.unauthorized, True
        if first:
            logger.error("the cloud refuses this line's upload token: %s", error)
            if self._alarms is not None:
                try:
                    self._alarms.raise_alarm(
                        AUTH_ALARM, f"sample uploads refused: {error[:200]}; check "
                        "uploads.token_file (lineguard cloud line token)")
                except (StoreError, ValueError) as e:
                    logger.error("cannot raise %s: %s", AUTH_ALARM, e)
        return self.cfg.auth_retry_s

    def _clear_alarm(self) -> None:
        assert self._alarms is not None
        try:
            self._alarms.clear(AUTH_ALARM)
        except StoreError as e:
            logger.error("cannot clear %s: %s", AUTH_ALARM, e)
