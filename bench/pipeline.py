"""End-to-end benchmark of the appliance pipeline against its limits and Ultralytics.

One run, the same pre-rendered frames and the same thread count for every column. The
model: for linesim the demo bundle (rebuilt at each size from the same ONNX); for
NEU-DET the real yolo11n trained on it (`../shared/models/neu-det-yolo11n/model.onnx`,
bundled at each size), so (a)-(d) run the model that fits the data:

- (a) bare ONNX Runtime `session.run` on ready-made input batches (same session options
  as the pipeline's engine: `OnnxDetector` with `intra_op_threads=T`, inter 1): the limit;
- (b) the whole appliance (`App` wiring: ReplaySource -> pipeline -> verdicts committed in
  SQLite, every verdict written, images off), frames/s from the first frame's capture to
  the last verdict committed (`store.flush()` returned);
- (c) Ultralytics `YOLO(model.onnx).predict(chunk, stream=True, imgsz, rect=False,
  device="cpu")` over the same frames, one call per chunk of B frames (a list of arrays
  is one batch for Ultralytics), in a subprocess (`import ultralytics` changes OMP and
  OpenCV thread settings for the whole process);
- (d) = (b) with an INT8 variant of the bundle (`cloud.training.quantize.quantize_bundle`);
- (e) with `--telemetry`: (b) with MQTT telemetry on (a local mosquitto on a free port,
  a subscriber in another process, metrics every second, one `events/defect` message per
  failed part: about 3/4 of linesim parts and nearly every NEU-DET image fail, so this is
  far above a real line's fail rate); e/b is what telemetry costs the pipeline;
- (g), (h) with `--drift`: (e) with images kept (the drift signals are computed from
  the frame a verdict carries, which it carries only with `keep_images` on), drift
  signals off (g, `drift.enabled: false`) and on (h, the default); h/g is what the
  drift signals cost the pipeline (target >= 0.97), g/h_cpu the same from the
  process's CPU per frame (median of the repeats; steadier on a shared machine), with
  the frames the drift thread counted and skipped (its queue full) in (h);
- (f) with `--panel`: the operator panel on (appliance/panel, uvicorn in the appliance
  process) and five clients in another process (bench/panel_clients.py) following the
  live view's event stream (up to 10 frames/s each) and polling the counters and the
  series every second.
  The live view needs the frames, so (f) runs with `keep_images` on, and is compared
  with (b_img), the same pipeline with images kept and no panel: f/b_img is what the
  panel costs the pipeline (target >= 0.95);
- verdict latency p50/p99 (judged_at - captured_at) with frames arriving at a fixed rate
  of half of (b)'s measured throughput at that batch size;
- where (b)'s CPU goes, in milliseconds of CPU per frame: the pipeline's own per-stage
  thread CPU (`PipelineStats.stage_cpu_ms`: source, preprocess, infer = the engine
  thread's share of session.run, postprocess, verdicts), the store's writer thread, the
  other threads (ONNX Runtime's pool), and the whole process.

The machine is shared, so for every configuration (a), (b), (d) are run back to back and
interleaved `--repeat` times; the best of each is used for the ratios (median also
reported). Prints a table and one JSON line (`{"bench": "pipeline", ...}`).

    .venv/bin/python bench/pipeline.py [--sizes 320,640] [--batches 1,4,8] [--frames N]
        [--datasets linesim,neu-det] [--threads T] [--repeat R] [--no-int8] [--quick]
        [--telemetry] [--drift] [--panel] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from appliance.app import App
from appliance.capture import ReplaySource
from appliance.config import DEMO_BUNDLE, config_from_dict
from appliance.records import InspectionRecord
from models.bundle import Bundle, load_bundle
from models.golden import build_bundle
from models.preprocess import preprocess_batch
from models.runtime import OnnxDetector

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
NEU_DET = SHARED / "datasets" / "neu-det"
NEU_DET_MODEL = SHARED / "models" / "neu-det-yolo11n" / "model.onnx"
NEU_DET_CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale",
                   "scratches")
STATION = "bench"
ImageBGR = npt.NDArray[np.uint8]
TARGETS = {"b/a": 0.92, "b/c": 1.2, "e/b": 0.97, "h/g": 0.97, "f/b_img": 0.95, "p99_over_a1": 2.0,
           "int8_map50_drop": 0.01}


# ---------------------------------------------------------------------------- frames
def linesim_frames(n: int) -> list[ImageBGR]:
    """`n` distinct simulated-line frames (640x480 BGR), rendered once."""
    from linesim.config import LineConfig
    from linesim.line import render

    cfg = LineConfig()
    return [np.asarray(render(cfg, i).image_bgr, dtype=np.uint8) for i in range(n)]


def neu_det_frames(n: int) -> list[ImageBGR]:
    """Up to `n` NEU-DET validation images (200x200, read as BGR), cycled to `n`."""
    paths = sorted((NEU_DET / "images" / "val").glob("*"))
    if not paths:
        paths = sorted(NEU_DET.rglob("*.jpg"))
    if not paths:
        raise SystemExit(f"no NEU-DET images under {NEU_DET}")
    images: list[ImageBGR] = []
    for p in paths[:n]:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is not None:
            images.append(np.ascontiguousarray(img, dtype=np.uint8))
    return [images[i % len(images)] for i in range(n)]


# ---------------------------------------------------------------------------- bundles
def resized_bundle(src: Bundle, size: int, out_dir: Path, golden: list[ImageBGR]) -> Bundle:
    """`src`'s ONNX (dynamic spatial dims) as a bundle with `size` x `size` input."""
    m = src.manifest
    if (m.input.height, m.input.width) == (size, size):
        return src
    return build_bundle(out_dir, src.model_path, name=m.name, version=m.version,
                        label=f"{m.label}-{size}", classes=m.classes, input_hw=(size, size),
                        preprocess=m.preprocess, postprocess=m.postprocess,
                        output_format=m.output.format, lineage=m.lineage, metrics=None,
                        golden_images=golden, providers=["cpu"])


def onnx_bundle(onnx: Path, classes: tuple[str, ...], template: Bundle, size: int,
                out_dir: Path, golden: list[ImageBGR]) -> Bundle:
    """A bundle of another ONNX detector (same pre/postprocessing specs as `template`)."""
    m = template.manifest
    return build_bundle(out_dir, onnx, name="neu-det-yolo11n", version=1,
                        label=f"bench-{size}", classes=classes, input_hw=(size, size),
                        preprocess=m.preprocess, postprocess=m.postprocess,
                        output_format="yolo_raw", lineage=m.lineage, metrics=None,
                        golden_images=golden, providers=["cpu"])


def cpu_info() -> dict[str, Any]:
    """CPU model, cores available, and whether it has VNNI (INT8 dot products)."""
    model, flags = platform.processor() or "?", ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("?", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = line.split(":", 1)[1]
    names = set(flags.split())
    return {"model": model, "cores": len(os.sched_getaffinity(0)),
            "vnni": sorted(n for n in names if "vnni" in n), "avx512": "avx512f" in names}


def _python_thread_cpu_s() -> dict[str, float]:
    """CPU seconds of this process's threads by Python thread name (others: "other"),
    from /proc/self/task/*/schedstat (nanoseconds on CPU)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            ns = int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        name = names.get(int(tid), "other")
        out[name] = out.get(name, 0.0) + ns / 1e9
    return out


def int8_bundle(src: Bundle, out_dir: Path, calib: list[ImageBGR]) -> Bundle:
    """INT8 variant of `src` via cloud.training.quantize (static, QDQ, minmax)."""
    from cloud.training.quantize import quantize_bundle

    return quantize_bundle(src, out_dir, calib, progress=lambda msg: None)


def map50(bundle: Bundle, data_yaml: Path) -> float:
    """mAP50 of `bundle` on a YOLO dataset's val split."""
    from models.evaluate import evaluate
    from models.yolo_dataset import load_data_yaml

    return float(evaluate(bundle, load_data_yaml(data_yaml), "val", providers=["cpu"]).map50)


# ---------------------------------------------------------------------------- (a)
def bench_session(bundle: Bundle, frames: list[ImageBGR], batch: int, threads: int,
                  detector: OnnxDetector | None = None) -> float:
    """(a): frames/s of `session.run` alone over preprocessed batches of `batch`."""
    m = bundle.manifest
    hw = (m.input.height, m.input.width)
    batches = [preprocess_batch(frames[i:i + batch], m.preprocess, hw)[0]
               for i in range(0, len(frames), batch)]
    det = detector or OnnxDetector(bundle.model_path, ["cpu"], intra_op_threads=threads,
                                   inter_op_threads=1)
    sess, inp, out = det.session, det.input_name, det.output_names[0]
    sess.run([out], {inp: batches[0]})  # warm-up
    t0 = time.perf_counter()
    for b in batches:
        sess.run([out], {inp: b})
    return len(frames) / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------- (b)/(d)
@dataclass
class PipelineRun:
    fps: float
    verdicts: dict[str, int]
    latencies_ms: list[float] = field(default_factory=list)
    mean_batch: float = 0.0
    stage_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    cpu_ms_per_frame: dict[str, float] = field(default_factory=dict)
    panel_clients: dict[str, Any] | None = None
    # Frames the drift thread counted and skipped (its queue full); None: drift off.
    drift_counted: int | None = None
    drift_skipped: int | None = None


class GatedSource:
    """A source whose `open` waits (bounded) for `gate`: frames start once the panel
    clients are logged in, so their logins are not part of the measured run."""

    def __init__(self, inner: ReplaySource, gate: threading.Event) -> None:
        self._inner = inner
        self._gate = gate

    def open(self) -> None:
        if not self._gate.wait(300):
            raise SystemExit("panel clients never got ready")
        self._inner.open()

    def read(self) -> Any:
        return self._inner.read()

    def close(self) -> None:
        self._inner.close()


class PanelClients:
    """Column (f): panel clients in another process (bench/panel_clients.py)."""

    USER, PASSWORD = "bench", "bench-password"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.summary: dict[str, Any] | None = None

    @classmethod
    def add_user(cls, cfg: Any) -> PanelClients:
        """An operator account in the run's (new) store, cheap argon2 parameters."""
        from argon2 import PasswordHasher

        from appliance.store import Store
        from appliance.users import UserBook
        with Store(cfg.store) as store:
            UserBook(store, hasher=PasswordHasher(time_cost=1, memory_cost=1024,
                                                  parallelism=1)
                     ).add(cls.USER, "operator", cls.PASSWORD)
        return cls()

    def start(self, url: str, n: int) -> None:
        script = Path(__file__).resolve().parent / "panel_clients.py"
        self.proc = subprocess.Popen([sys.executable, str(script), url, self.USER,
                                      self.PASSWORD, str(n)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip() if self.proc.stdout else ""
        if line != "ready":
            raise SystemExit(f"panel clients did not start: {line!r}")

    def stop(self) -> None:
        if self.proc is None:
            return
        out, _ = self.proc.communicate(timeout=60)
        self.summary = json.loads(out.strip().splitlines()[-1])


def bench_pipeline(bundle_dir: Path, frames: list[ImageBGR], batch: int, threads: int,
                   work: Path, rate_fps: float | None = None,
                   mqtt_port: int | None = None, keep_images: bool = False,
                   panel_clients: int = 0, drift: bool = True) -> PipelineRun:
    """(b)/(d)/(e)/(f): the real appliance over a ReplaySource of `frames` (paced at
    `rate_fps` if given; with telemetry to 127.0.0.1:`mqtt_port` if given; with the panel
    and `panel_clients` clients following it if > 0); frames/s from the first capture to
    the last verdict committed. Frames start once the clients are logged in. `drift`:
    the drift signals on (they run only with telemetry)."""
    data_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    raw: dict[str, Any] = {
        "data_dir": str(data_dir),
        "stations": [{"name": STATION}],
        "model": {"bundle": str(bundle_dir), "verify_golden": False},
        "engine": {"providers": ["cpu"], "intra_op_threads": threads},
        "pipeline": {"max_batch": batch, "overflow": "block", "keep_images": keep_images,
                     "queue_frames": max(32, 4 * batch)},
        "drift": {"enabled": drift},
    }
    if panel_clients:
        raw["panel"] = {"port": 0}
    if mqtt_port is not None:
        raw["telemetry"] = {"broker": {"host": "127.0.0.1", "port": mqtt_port},
                            "metrics_interval_s": 1.0}
        raw.update(site="bench", line="bench-1")  # telemetry needs a line identity
    cfg = config_from_dict(raw, "bench")
    n = len(frames)
    captured: list[float] = []
    judged: list[float] = []
    done = threading.Event()

    def listener(rec: InspectionRecord) -> None:
        captured.append(rec.captured_at)
        judged.append(rec.judged_at)
        if len(judged) >= n:
            done.set()

    gate = threading.Event()
    source = GatedSource(ReplaySource(frames, loop=False, max_fps=rate_fps), gate)
    app = App(cfg, sources={STATION: source}, listeners=[listener], require_model=True)
    clients = PanelClients.add_user(cfg) if panel_clients else None
    pipeline = app.start()  # model load and warm-up are not part of the CPU per frame
    if clients is not None and app.panel is not None:
        clients.start(app.panel.url, panel_clients)
    gate.set()
    threads_before = _python_thread_cpu_s()
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    try:
        if not done.wait(timeout=600):
            raise SystemExit(f"pipeline judged {len(judged)}/{n} frames in 600 s")
        store = app.store
        if store is None:
            raise SystemExit("store closed early")
        store.flush()
        t_end = time.time()
        stats = pipeline.stats()
        recorder = app.drift_recorder
        drift_counts = (None, None) if recorder is None else (recorder.counted,
                                                              recorder.skipped_busy)
        threads_after = _python_thread_cpu_s()
        usage_after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        if clients is not None:
            clients.stop()
        app.stop()
    shutil.rmtree(data_dir, ignore_errors=True)
    lat = [(j - c) * 1000.0 for c, j in zip(captured, judged, strict=True)]
    cpu = {k: v / n for k, v in stats.stage_cpu_ms.items()}
    for name, key in (("store-writer", "store_writer"), ("other", "other_threads")):
        cpu[key] = 1000.0 * (threads_after.get(name, 0.0) - threads_before.get(name, 0.0)) / n
    process_s = (usage_after.ru_utime - usage_before.ru_utime
                 + usage_after.ru_stime - usage_before.ru_stime)
    cpu["process"] = 1000.0 * process_s / n
    return PipelineRun(fps=n / (t_end - min(captured)), verdicts=dict(stats.verdicts),
                       latencies_ms=lat, mean_batch=stats.mean_batch,
                       stage_ms=stats.latency_ms,
                       cpu_ms_per_frame={k: round(v, 3) for k, v in cpu.items()},
                       panel_clients=clients.summary if clients is not None else None,
                       drift_counted=drift_counts[0], drift_skipped=drift_counts[1])


# ---------------------------------------------------------------------------- (e)
_SUBSCRIBER_SCRIPT = r"""
import sys, threading
from protocol.mqtt_client import ClientOptions, MqttHandler, paho_client
from protocol.mqtt_config import BrokerConfig
class Subscriber(MqttHandler):
    def on_connect(self, session_present):
        client.subscribe(["lineguard/#"], 1)
client = paho_client(BrokerConfig(port=int(sys.argv[1])),
                     ClientOptions(client_id="bench-subscriber"), Subscriber())
client.start()
threading.Event().wait()
"""


class TelemetryRig:
    """A local mosquitto and a subscriber process for column (e); a context manager."""

    def __init__(self, work: Path) -> None:
        # bench/telemetry.py imports its sibling telemetry_load by plain name: run it from
        # the bench directory on the path, as its own script does.
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from telemetry import start_broker  # type: ignore[import-not-found]

        self.broker, self.port = start_broker(work)
        self.subscriber = subprocess.Popen([sys.executable, "-c", _SUBSCRIBER_SCRIPT,
                                            str(self.port)])
        time.sleep(1.0)  # subscribed before the first run (else: "no matching subscribers")

    def __enter__(self) -> TelemetryRig:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in (self.subscriber, self.broker):
            proc.terminate()
            proc.wait(10)


# ---------------------------------------------------------------------------- (c)
_ULTRA_SCRIPT = r"""
import json, os, sys, time
import numpy as np
threads, onnx, frames_npy = int(sys.argv[1]), sys.argv[2], sys.argv[3]
imgsz, batch = int(sys.argv[4]), int(sys.argv[5])
from ultralytics import YOLO
import torch
torch.set_num_threads(threads)
frames = list(np.load(frames_npy))
model = YOLO(onnx, task="detect")
kw = dict(imgsz=imgsz, rect=False, device="cpu", verbose=False, stream=True, batch=batch)
for _ in model.predict(frames[:batch], **kw):
    pass
n = 0
t0 = time.perf_counter()
for i in range(0, len(frames), batch):
    for r in model.predict(frames[i:i + batch], **kw):
        n += 1
dt = time.perf_counter() - t0
print(json.dumps({"fps": n / dt, "frames": n}))
"""


def ultralytics_env(work: Path, threads: int) -> dict[str, str]:
    """Offline Ultralytics settings, with a private config dir holding Arial.ttf."""
    import matplotlib

    cfg_dir = work / "yolo-config"
    cfg_dir.mkdir(exist_ok=True)
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not (cfg_dir / "Arial.ttf").exists():
        shutil.copy(font, cfg_dir / "Arial.ttf")
    return {**os.environ, "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0",
            "YOLO_CONFIG_DIR": str(cfg_dir), "OMP_NUM_THREADS": str(threads)}


def bench_ultralytics(onnx: Path, frames_npy: Path, size: int, batch: int, threads: int,
                      env: dict[str, str]) -> float | None:
    """(c): Ultralytics predict frames/s (subprocess), None if it failed."""
    proc = subprocess.run([sys.executable, "-c", _ULTRA_SCRIPT, str(threads), str(onnx),
                           str(frames_npy), str(size), str(batch)],
                          capture_output=True, text=True, env=env, timeout=900, check=False)
    if proc.returncode != 0:
        sys.stderr.write(f"ultralytics failed (size {size}, batch {batch}):\n"
                         f"{proc.stderr[-2000:]}\n")
        return None
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["fps"])


# ---------------------------------------------------------------------------- driver
def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _ratio(x: float | None, y: float | None) -> float | None:
    return round(x / y, 3) if x and y else None


def run_config(ds: str, size: int, batch: int, frames: list[ImageBGR], bundles: dict[str, Bundle],
               args: argparse.Namespace, work: Path, frames_npy: Path,
               env: dict[str, str], mqtt_port: int | None = None) -> dict[str, Any]:
    """All columns for one (dataset, size, batch)."""
    fp32 = bundles["fp32"]
    det = OnnxDetector(fp32.model_path, ["cpu"], intra_op_threads=args.threads,
                       inter_op_threads=1)
    a_runs: list[float] = []
    b_runs: list[PipelineRun] = []
    d_runs: list[PipelineRun] = []
    e_runs: list[PipelineRun] = []
    g_runs: list[PipelineRun] = []
    h_runs: list[PipelineRun] = []
    bi_runs: list[PipelineRun] = []
    f_runs: list[PipelineRun] = []
    for _ in range(args.repeat):  # interleaved: a, b, d, e, b_img, f, a, b, ...
        a_runs.append(bench_session(fp32, frames, batch, args.threads, det))
        b_runs.append(bench_pipeline(fp32.root, frames, batch, args.threads, work))
        if "int8" in bundles:
            d_runs.append(bench_pipeline(bundles["int8"].root, frames, batch, args.threads,
                                         work))
        if mqtt_port is not None:
            # (e) keeps no images, so its drift signals would see no frames: off.
            e_runs.append(bench_pipeline(fp32.root, frames, batch, args.threads, work,
                                         mqtt_port=mqtt_port, drift=False))
            if args.drift:
                g_runs.append(bench_pipeline(fp32.root, frames, batch, args.threads, work,
                                             mqtt_port=mqtt_port, keep_images=True,
                                             drift=False))
                h_runs.append(bench_pipeline(fp32.root, frames, batch, args.threads, work,
                                             mqtt_port=mqtt_port, keep_images=True))
        if args.panel:
            bi_runs.append(bench_pipeline(fp32.root, frames, batch, args.threads, work,
                                          keep_images=True))
            f_runs.append(bench_pipeline(fp32.root, frames, batch, args.threads, work,
                                         keep_images=True, panel_clients=args.panel_clients))
    a1 = bench_session(fp32, frames[: max(8, len(frames) // 4)], 1, args.threads, det)
    c = None if args.no_ultralytics else bench_ultralytics(
        fp32.model_path, frames_npy, size, batch, args.threads, env)
    a = max(a_runs)
    best_b = max(b_runs, key=lambda r: r.fps)
    b = best_b.fps
    d = max(r.fps for r in d_runs) if d_runs else None
    e = max(r.fps for r in e_runs) if e_runs else None
    g = max(r.fps for r in g_runs) if g_runs else None
    # CPU per frame of the whole process, median over the repeats: on a shared machine a
    # steadier measure of what drift costs than frames/s (its ratio is the throughput
    # ratio of a CPU-bound appliance).
    g_cpu = statistics.median(r.cpu_ms_per_frame["process"] for r in g_runs) if g_runs else None
    h_cpu = statistics.median(r.cpu_ms_per_frame["process"] for r in h_runs) if h_runs else None
    best_h = max(h_runs, key=lambda r: r.fps) if h_runs else None
    h = best_h.fps if best_h else None
    best_bi = max(bi_runs, key=lambda r: r.fps) if bi_runs else None
    b_img = best_bi.fps if best_bi else None
    best_f = max(f_runs, key=lambda r: r.fps) if f_runs else None
    f = best_f.fps if best_f else None
    rate = b / 2.0
    n_lat = max(batch * 4, min(len(frames), int(rate * args.latency_s)))
    lat = bench_pipeline(fp32.root, frames[:n_lat], batch, args.threads, work, rate_fps=rate)
    a1_ms = 1000.0 / a1
    p99 = _pct(lat.latencies_ms, 99)
    return {
        "dataset": ds, "size": size, "batch": batch, "frames": len(frames),
        "a_fps": round(a, 1), "a_fps_median": round(statistics.median(a_runs), 1),
        "b_fps": round(b, 1), "b_fps_median": round(statistics.median(r.fps for r in b_runs), 1),
        "c_fps": round(c, 1) if c else None,
        "d_fps": round(d, 1) if d else None,
        "d_fps_median": round(statistics.median(r.fps for r in d_runs), 1) if d_runs else None,
        "e_fps": round(e, 1) if e else None,
        "e_fps_median": round(statistics.median(r.fps for r in e_runs), 1) if e_runs else None,
        "g_fps": round(g, 1) if g else None,
        "g_fps_median": round(statistics.median(r.fps for r in g_runs), 1) if g_runs else None,
        "h_fps": round(h, 1) if h else None,
        "h_fps_median": round(statistics.median(r.fps for r in h_runs), 1) if h_runs else None,
        "g_process_cpu_ms": round(g_cpu, 3) if g_cpu else None,
        "h_process_cpu_ms": round(h_cpu, 3) if h_cpu else None,
        "h_drift_counted": best_h.drift_counted if best_h else None,
        "h_drift_skipped": best_h.drift_skipped if best_h else None,
        "b_img_fps": round(b_img, 1) if b_img else None,
        "f_fps": round(f, 1) if f else None,
        "f_fps_median": round(statistics.median(r.fps for r in f_runs), 1) if f_runs else None,
        "b_img_fps_median": (round(statistics.median(r.fps for r in bi_runs), 1)
                             if bi_runs else None),
        "f_clients": best_f.panel_clients if best_f else None,
        # the appliance process's CPU per frame (ms) without and with the panel: what the
        # panel costs inside the appliance, apart from the clients' own CPU
        "b_img_process_cpu_ms": best_bi.cpu_ms_per_frame["process"] if best_bi else None,
        "f_process_cpu_ms": best_f.cpu_ms_per_frame["process"] if best_f else None,
        "b/a": _ratio(b, a), "b/c": _ratio(b, c), "d/c": _ratio(d, c), "e/b": _ratio(e, b),
        "h/g": _ratio(h, g), "h/g_median": _ratio(
            statistics.median(r.fps for r in h_runs) if h_runs else None,
            statistics.median(r.fps for r in g_runs) if g_runs else None),
        "g/h_cpu": _ratio(g_cpu, h_cpu),
        "f/b_img": _ratio(f, b_img),
        "b_mean_batch": round(best_b.mean_batch, 2), "b_verdicts": best_b.verdicts,
        "b_stage_ms": best_b.stage_ms, "b_cpu_ms_per_frame": best_b.cpu_ms_per_frame,
        "half_load_fps": round(rate, 1), "latency_frames": n_lat,
        "latency_p50_ms": round(_pct(lat.latencies_ms, 50), 2),
        "latency_p99_ms": round(p99, 2), "latency_mean_batch": round(lat.mean_batch, 2),
        "a_batch1_ms": round(a1_ms, 2), "p99_over_a1": round(p99 / a1_ms, 2),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = ["dataset", "size", "batch", "a_fps", "b_fps", "c_fps", "d_fps", "e_fps",
            "g_fps", "h_fps", "b_img_fps", "f_fps", "b/a", "b/c", "d/c", "e/b", "h/g", "g/h_cpu",
            "f/b_img", "b_mean_batch", "half_load_fps", "latency_p50_ms", "latency_p99_ms",
            "a_batch1_ms", "p99_over_a1"]
    print(" | ".join(f"{c:>8}" for c in cols))
    for r in rows:
        print(" | ".join(f"{'-' if r[c] is None else r[c]!s:>8}" for c in cols))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sizes", default="320,640")
    p.add_argument("--batches", default="1,4,8")
    p.add_argument("--frames", type=int, default=256)
    p.add_argument("--datasets", default="linesim,neu-det")
    p.add_argument("--threads", type=int, default=max(1, len(os.sched_getaffinity(0))))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--latency-s", type=float, default=8.0,
                   help="length of the half-load latency run (seconds of frames)")
    p.add_argument("--no-int8", action="store_true")
    p.add_argument("--no-ultralytics", action="store_true")
    p.add_argument("--eval-images", type=int, default=100,
                   help="linesim val images for the FP32 vs INT8 mAP50 check (0: skip)")
    p.add_argument("--telemetry", action="store_true",
                   help="add column (e): the pipeline with MQTT telemetry to a local mosquitto")
    p.add_argument("--drift", action="store_true",
                   help="(g), (h): drift signals off and on, h/g (implies --telemetry)")
    p.add_argument("--panel", action="store_true",
                   help="add columns (b_img) and (f): the pipeline with images kept, without "
                        "and with the operator panel and clients following it")
    p.add_argument("--panel-clients", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    args.telemetry = args.telemetry or args.drift
    if args.quick:
        args.sizes, args.batches, args.frames, args.datasets = "320", "1,4", 16, "linesim"
        args.repeat, args.latency_s, args.eval_images = 1, 1.0, 0
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    datasets = args.datasets.split(",")
    load = os.getloadavg()
    cpu = cpu_info()
    print(f"# bench/pipeline: threads={args.threads} frames={args.frames} repeat={args.repeat} "
          f"cores={os.cpu_count()} loadavg={load[0]:.1f},{load[1]:.1f},{load[2]:.1f}")
    print(f"# CPU: {cpu['model']}, {cpu['cores']} cores available, VNNI: "
          f"{', '.join(cpu['vnni']) or 'no'}, AVX-512: {'yes' if cpu['avx512'] else 'no'}")
    print("# shared machine: a/b/d interleaved per configuration, best of --repeat used for "
          "ratios (medians in the JSON); c in a subprocess right after")
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lineguard-bench-") as tmp, \
            contextlib.ExitStack() as stack:
        work = Path(tmp)
        mqtt_port = stack.enter_context(TelemetryRig(work)).port if args.telemetry else None
        env = ultralytics_env(work, args.threads)
        demo = load_bundle(DEMO_BUNDLE)
        golden = linesim_frames(2)
        calib = linesim_frames(32)
        bundles: dict[tuple[str, int], dict[str, Bundle]] = {}
        for ds in datasets:
            if ds == "neu-det" and not NEU_DET_MODEL.is_file():
                raise SystemExit(f"no NEU-DET model at {NEU_DET_MODEL}")
            ds_golden = golden if ds == "linesim" else neu_det_frames(2)
            ds_calib = calib if ds == "linesim" else neu_det_frames(32)
            for size in sizes:
                out = work / f"{ds}-{size}"
                fp32 = resized_bundle(demo, size, out / "fp32", ds_golden) if ds == "linesim" \
                    else onnx_bundle(NEU_DET_MODEL, NEU_DET_CLASSES, demo, size, out / "fp32",
                                     ds_golden)
                bs = {"fp32": fp32}
                if not args.no_int8:
                    t0 = time.perf_counter()
                    bs["int8"] = int8_bundle(fp32, out / "int8", ds_calib)
                    print(f"# INT8 bundle for {ds} {size}: {time.perf_counter() - t0:.0f} s")
                bundles[(ds, size)] = bs
        if not args.no_int8 and args.eval_images > 0 and "linesim" in datasets:
            from linesim.config import LineConfig
            from linesim.dataset import export_yolo

            data_yaml = export_yolo(work / "evalset", LineConfig(seed=12345), n_train=0,
                                    n_val=args.eval_images)
            s0 = sizes[0]
            m_fp32 = map50(bundles[("linesim", s0)]["fp32"], data_yaml)
            m_int8 = map50(bundles[("linesim", s0)]["int8"], data_yaml)
            extra["int8_map50"] = {"size": s0, "images": args.eval_images,
                                   "fp32": round(m_fp32, 4), "int8": round(m_int8, 4),
                                   "drop_points": round((m_fp32 - m_int8) * 100, 2)}
            print(f"# mAP50 on {args.eval_images} linesim val images at {s0}: "
                  f"fp32 {m_fp32:.4f}, int8 {m_int8:.4f}")
        for ds in datasets:
            frames = linesim_frames(args.frames) if ds == "linesim" else neu_det_frames(args.frames)
            frames_npy = work / f"frames-{ds}.npy"
            np.save(frames_npy, np.stack(frames))
            for size in sizes:
                for batch in batches:
                    row = run_config(ds, size, batch, frames, bundles[(ds, size)], args,
                                     work, frames_npy, env, mqtt_port)
                    rows.append(row)
                    print(json.dumps({k: row[k] for k in row if k != "b_stage_ms"}), flush=True)
                    print(f"# CPU ms/frame of (b), {ds} {size} B{batch}: " + ", ".join(
                        f"{k} {v:.2f}" for k, v in row["b_cpu_ms_per_frame"].items()),
                        flush=True)
    print()
    print_table(rows)
    result = {"bench": "pipeline", "cpu": cpu, "threads": args.threads, "frames": args.frames,
              "repeat": args.repeat, "loadavg_start": load, "loadavg_end": os.getloadavg(),
              "targets": TARGETS, "rows": rows, **extra}
    line = json.dumps(result)
    if args.json_out:
        args.json_out.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
