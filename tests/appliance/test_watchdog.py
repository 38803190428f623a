"""sd_notify and the watchdog: datagrams read from a real NOTIFY_SOCKET (a path and an
abstract one); READY after the first stored verdict, pings while frames flow, none once
inference is blocked (within WatchdogSec / 2), STOPPING at the drain."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from appliance.app import App
from appliance.capture import ReplaySource
from appliance.config import load_config
from appliance.watchdog import Notifier, Progress, is_progressing
from models.preprocess import Tensor
from models.runtime import OnnxDetector
from tests.appliance.pipeline_helpers import WHITE, tiny_bundle

pytestmark = pytest.mark.timeout(60)


class Receiver:
    """A datagram socket collecting (monotonic time, message) pairs."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.got: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.got.append((time.monotonic(), data.decode()))

    def messages(self, text: str) -> list[float]:
        return [t for t, m in list(self.got) if m == text]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[Receiver, str]]:
    path = tmp_path / "notify.sock"
    r = Receiver(str(path))
    yield r, str(path)
    r.close()


def wait_for(condition: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_notifier_speaks_to_an_abstract_socket_and_is_silent_without_one() -> None:
    name = f"lineguard-test-{secrets.token_hex(6)}"
    r = Receiver(b"\0" + name.encode())
    try:
        notifier = Notifier({"NOTIFY_SOCKET": f"@{name}", "WATCHDOG_USEC": "2000000"})
        assert notifier.watchdog_s == 2.0
        assert notifier.notify("READY=1")
        wait_for(lambda: r.messages("READY=1"), 2)
        notifier.close()
    finally:
        r.close()
    assert not Notifier({}).notify("READY=1")
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "5",
                     "WATCHDOG_PID": "1"}).watchdog_s is None  # another process's


@pytest.mark.parametrize(("before", "after", "ok"), [
    (Progress(10, 10, 3), Progress(20, 18, 3), True),    # flowing
    (Progress(10, 10, 0), Progress(10, 10, 0), True),    # idle line
    (Progress(10, 10, 5), Progress(10, 10, 5), False),   # frames waiting, no verdict
    (Progress(10, 10, 5), Progress(20, 10, 5), False),   # verdicts, but the writer is stuck
])
def test_progress_table(before: Progress, after: Progress, ok: bool) -> None:
    assert is_progressing(before, after) is ok


class GatedDetector(OnnxDetector):
    """Runs only while `gate` is set (a blocked inference otherwise)."""

    gate = threading.Event()

    def run(self, batch: Tensor) -> Tensor:
        type(self).gate.wait()
        return super().run(batch)


def _factory(path: Path, providers: Sequence[str] | None, intra: int,
             inter: int) -> OnnxDetector:
    return GatedDetector(path, providers, intra_op_threads=intra, inter_op_threads=inter)


def test_stalled_pipeline_stops_the_pings_within_half_the_watchdog_period(
    tmp_path: Path, receiver: tuple[Receiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    r, path = receiver
    watchdog_s = 1.2
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", str(int(watchdog_s * 1e6)))
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    bundle = tiny_bundle(tmp_path, version=1)
    cfg = load_config(None, {
        "data_dir": str(tmp_path / "data"),
        "stations": [{"name": "cam", "source": {"kind": "sim", "realtime": False}}],
        "model": {"bundle": str(bundle.root)}, "engine": {"intra_op_threads": 1},
        "pipeline": {"overflow": "block", "max_batch": 4},
        "store": {"flush_interval_ms": 10}})
    GatedDetector.gate.set()
    app = App(cfg, sources={"cam": ReplaySource([WHITE], max_fps=200.0)},
              detector_factory=_factory)
    app.start()
    try:
        wait_for(lambda: r.messages("READY=1"), 10)
        wait_for(lambda: len(r.messages("WATCHDOG=1")) >= 3, 10)
        GatedDetector.gate.clear()
        blocked_at = time.monotonic()
        time.sleep(watchdog_s * 2)  # the stall to observe (no condition to wait for)
        late = [t - blocked_at for t in r.messages("WATCHDOG=1") if t > blocked_at]
        assert all(dt <= watchdog_s / 2 for dt in late), late
        assert app.stats().queue_depths["pending"] > 0
        GatedDetector.gate.set()
        pings = len(r.messages("WATCHDOG=1"))
        wait_for(lambda: len(r.messages("WATCHDOG=1")) > pings, 5)  # flowing again
    finally:
        GatedDetector.gate.set()
        app.stop()
    wait_for(lambda: r.messages("STOPPING=1"), 5)
    assert r.messages("READY=1")[0] < r.messages("WATCHDOG=1")[0]
