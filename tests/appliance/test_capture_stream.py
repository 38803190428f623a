"""StreamSource + ResilientSource against a real HTTP MJPEG server in another process,
which is stopped and restarted on the same port (stream lost), or frozen (stream stalls).

Every wait is bounded; nothing asserts speed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.capture import Frame, ResilientSource, SourceState, StreamSource
from protocol.backoff import BackoffConfig

S = SourceState
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(120)


class StreamServer:
    """The tests.appliance.stream_server process; start, stop, restart on one port."""

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.appliance.stream_server", "--port", str(self.port),
             "--fps", "40"],
            cwd=REPO, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the server prints its port once it listens
        if not line.startswith("PORT "):
            self.stop()
            pytest.fail(f"stream server did not start: {line!r}")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"


@pytest.fixture
def server() -> Iterator[StreamServer]:
    s = StreamServer()
    s.start()
    try:
        yield s
    finally:
        if s.proc is not None and s.proc.poll() is None:
            os.kill(s.proc.pid, signal.SIGCONT)  # in case a test left it frozen
        s.stop()


class Consumer:
    """Runs a ResilientSource in a thread, recording frames and state changes."""

    def __init__(self, url: str) -> None:
        self.frames: list[Frame] = []
        self.events: list[tuple[S, S, str]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.rs = ResilientSource(
            "cam1",
            StreamSource(url, open_timeout_ms=1000, read_timeout_ms=1000),
            reconnect=BackoffConfig(initial_s=0.1, max_s=0.4),
            on_state=self._on_state,
        )
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on_state(self, station: str, old: S, new: S, detail: str) -> None:
        assert station == "cam1"
        with self.lock:
            self.events.append((old, new, detail))

    def _run(self) -> None:
        for f in self.rs.frames_until(self.stop):
            with self.lock:
                self.frames.append(f)

    def wait_for(self, what: str, cond: Callable[[], bool], timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if cond():
                    return
            time.sleep(0.02)
        pytest.fail(f"timed out waiting for {what}; events: {self.events}")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "capture thread did not stop"

    def transitions(self) -> list[tuple[S, S]]:
        with self.lock:
            return [(o, n) for o, n, _ in self.events]


def _marker(f: Frame) -> int:
    """The server's per-connection frame counter, from the frame's top-left block."""
    return int(f.image_bgr[2:6, 2:6].mean().round())


def test_stream_server_restart_reconnects_and_reports_gap(server: StreamServer) -> None:
    c = Consumer(server.url)
    c.thread.start()
    try:
        c.wait_for("first frames", lambda: len(c.frames) >= 5)
        server.stop()
        c.wait_for("loss", lambda: c.rs.state != S.STREAMING)
        # Let at least one reconnect attempt fail while the server is down.
        c.wait_for("a failed retry", lambda: c.rs.attempts >= 1)
        n_before = len(c.frames)
        server.start()  # same port
        c.wait_for("frames after restart",
                   lambda: c.rs.reconnects == 1 and len(c.frames) >= n_before + 5)
    finally:
        c.close()

    t = c.transitions()
    assert t[0] == (S.CONNECTING, S.STREAMING)
    assert t[1] == (S.STREAMING, S.LOST)
    assert t[2] == (S.LOST, S.CONNECTING)
    assert (S.CONNECTING, S.LOST) in t  # the failed retry while the server was down
    reconnect_at = t.index((S.CONNECTING, S.STREAMING), 1)
    assert set(t[1:reconnect_at]) <= {(S.STREAMING, S.LOST), (S.LOST, S.CONNECTING),
                                      (S.CONNECTING, S.LOST)}
    assert t[-1] == (S.STREAMING, S.ENDED)
    assert c.rs.reconnects == 1
    gap_s = c.rs.last_gap_s
    assert gap_s is not None and gap_s > 0
    assert f"{gap_s:.2f} s gap" in c.events[reconnect_at][2]

    # Frame ids run on across the reconnect; the new connection starts the server's
    # counter again, proving frames came from the restarted process.
    assert [f.seq for f in c.frames] == list(range(len(c.frames)))
    assert len({f.frame_id for f in c.frames}) == len(c.frames)
    markers = [_marker(f) for f in c.frames]
    assert markers[:3] == [0, 1, 2]
    assert 0 in markers[n_before:n_before + 3]
    assert all(f.part_id is None and f.image_bgr.shape == (48, 64, 3) for f in c.frames)
    assert all(a.captured_at <= b.captured_at for a, b in zip(c.frames, c.frames[1:],
                                                               strict=False))


def test_stalled_stream_times_out_and_recovers(server: StreamServer) -> None:
    """The server process is frozen (SIGSTOP): no EOF, no error, just silence. The read
    timeout turns that into a loss; after SIGCONT the source reconnects."""
    assert server.proc is not None
    pid = server.proc.pid
    c = Consumer(server.url)
    c.thread.start()
    try:
        c.wait_for("first frames", lambda: len(c.frames) >= 3)
        os.kill(pid, signal.SIGSTOP)
        c.wait_for("loss by read timeout", lambda: c.rs.state != S.STREAMING)
        n_before = len(c.frames)
        os.kill(pid, signal.SIGCONT)
        c.wait_for("frames after thaw",
                   lambda: c.rs.reconnects >= 1 and len(c.frames) >= n_before + 3)
    finally:
        c.close()
    t = c.transitions()
    assert t[:3] == [(S.CONNECTING, S.STREAMING), (S.STREAMING, S.LOST),
                     (S.LOST, S.CONNECTING)]
    assert c.rs.last_gap_s is not None and c.rs.last_gap_s > 0


def test_stop_while_server_is_down_ends_promptly(server: StreamServer) -> None:
    server.stop()
    c = Consumer(server.url)
    c.thread.start()
    try:
        c.wait_for("failed open", lambda: c.rs.attempts >= 2)
    finally:
        c.close()  # bounded join: the backoff wait honours stop
    assert c.frames == []
    assert c.rs.state == S.ENDED
