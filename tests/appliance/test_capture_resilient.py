"""ResilientSource: backoff use, state machine, counters, gap reports, stop handling.

The state machine is driven by a scripted source (the logic under test is the wrapper,
not a device) with an injected clock and sleep; the real sources are exercised against
real files and a real HTTP stream in the other test_capture_* files.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from appliance.capture import (
    Frame,
    FramePacer,
    ResilientSource,
    SourceEnded,
    SourceLost,
    SourceState,
)
from appliance.capture.source import SourceRead
from protocol.backoff import BackoffConfig

S = SourceState


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float, stop: threading.Event) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


class ScriptedSource:
    """Opens and reads according to a script. Open script items: "ok" or "lost";
    read script items: "frame", "lost", "ended". Exhausted read script ends."""

    def __init__(self, opens: list[str], reads: list[str], clock: FakeClock | None = None,
                 read_cost_s: float = 0.0) -> None:
        self.opens = list(opens)
        self.reads = list(reads)
        self.clock = clock
        self.read_cost_s = read_cost_s
        self.is_open = False
        self.open_calls = 0
        self.close_calls = 0
        self.n = 0

    def open(self) -> None:
        self.open_calls += 1
        step = self.opens.pop(0) if self.opens else "ok"
        if step == "lost":
            raise SourceLost("device not there")
        self.is_open = True

    def read(self) -> SourceRead:
        assert self.is_open, "read on a closed source"
        if self.clock is not None:
            self.clock.t += self.read_cost_s
        step = self.reads.pop(0) if self.reads else "ended"
        if step == "lost":
            raise SourceLost("cable pulled")
        if step == "ended":
            raise SourceEnded("end of script")
        self.n += 1
        return np.full((4, 4, 3), self.n, np.uint8), f"p{self.n}", None

    def close(self) -> None:
        self.close_calls += 1
        self.is_open = False


def _run(src: ResilientSource, limit: int = 1000) -> list[Frame]:
    frames: list[Frame] = []
    stop = threading.Event()
    for i, f in enumerate(src.frames_until(stop)):
        frames.append(f)
        if i >= limit:
            pytest.fail("runaway loop")
    return frames


def test_failed_opens_back_off_exponentially_then_stream() -> None:
    clock = FakeClock()
    src = ScriptedSource(opens=["lost"] * 5 + ["ok"], reads=["frame", "frame"])
    rs = ResilientSource("st1", src, reconnect=BackoffConfig(initial_s=0.5, max_s=4.0),
                         clock=clock, sleep=clock.sleep)
    frames = _run(rs)
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert [f.frame_id for f in frames] == ["st1:0", "st1:1"]
    assert rs.reconnects == 0  # the first connect is not a reconnect
    assert rs.state == S.ENDED
    assert src.close_calls >= 1 and not src.is_open


def test_loss_reconnects_reports_states_and_gap() -> None:
    clock = FakeClock()
    events: list[tuple[str, S, S, str, int, float | None]] = []
    src = ScriptedSource(opens=["ok", "lost", "lost", "ok"],
                         reads=["frame", "frame", "lost", "frame", "ended"],
                         clock=clock, read_cost_s=0.1)
    rs: ResilientSource

    def on_state(station: str, old: S, new: S, detail: str) -> None:
        events.append((station, old, new, detail, rs.reconnects, rs.last_gap_s))

    rs = ResilientSource("st1", src, reconnect=BackoffConfig(initial_s=0.5, max_s=30.0),
                         clock=clock, sleep=clock.sleep, on_state=on_state)
    frames = _run(rs)

    assert [(o, n) for _, o, n, *_ in events] == [
        (S.CONNECTING, S.STREAMING),
        (S.STREAMING, S.LOST),
        (S.LOST, S.CONNECTING),
        (S.CONNECTING, S.LOST),  # retry 2 fails
        (S.LOST, S.CONNECTING),
        (S.CONNECTING, S.LOST),  # retry 3 fails
        (S.LOST, S.CONNECTING),
        (S.CONNECTING, S.STREAMING),
        (S.STREAMING, S.ENDED),
    ]
    assert all(e[0] == "st1" for e in events)
    assert clock.sleeps == [0.5, 1.0, 2.0]
    assert rs.reconnects == 1
    # The gap runs from the last frame before the loss to the reopen: the failed read
    # (0.1 s) plus the three backoff waits.
    assert rs.last_gap_s == pytest.approx(0.1 + 0.5 + 1.0 + 2.0)
    reconnect = events[7]
    assert reconnect[4] == 1 and reconnect[5] == pytest.approx(3.6)
    assert "3.60 s gap" in reconnect[3]
    assert [f.seq for f in frames] == [0, 1, 2]
    assert [f.part_id for f in frames] == ["p1", "p2", "p3"]
    assert rs.frames == 3


def test_backoff_resets_only_after_a_frame() -> None:
    # Opens succeed but reads fail at once: the delay must keep growing (no hot loop).
    clock = FakeClock()
    src = ScriptedSource(opens=[], reads=["frame", "lost", "lost", "lost", "frame", "lost",
                                          "ended"])
    rs = ResilientSource("s", src, reconnect=BackoffConfig(initial_s=1.0, max_s=60.0),
                         clock=clock, sleep=clock.sleep)
    frames = _run(rs)
    assert clock.sleeps == [1.0, 2.0, 4.0, 1.0]
    assert len(frames) == 2
    assert rs.reconnects == 4


def test_frames_stamped_by_clock_and_numbered_from_first_seq() -> None:
    clock = FakeClock(t=1700000000.0)
    src = ScriptedSource(opens=[], reads=["frame", "frame"], clock=clock, read_cost_s=0.25)
    rs = ResilientSource("cam-2", src, clock=clock, sleep=clock.sleep, first_seq=41)
    frames = _run(rs)
    assert [f.frame_id for f in frames] == ["cam-2:41", "cam-2:42"]
    assert [f.captured_at for f in frames] == [1700000000.25, 1700000000.5]
    assert all(f.station == "cam-2" for f in frames)
    assert frames[1].image_bgr.shape == (4, 4, 3)


def test_source_capture_time_is_kept() -> None:
    class Timed(ScriptedSource):
        def read(self) -> SourceRead:
            image, part, _ = super().read()
            return image, part, 123.5

    clock = FakeClock()
    rs = ResilientSource("s", Timed(opens=[], reads=["frame"]), clock=clock,
                         sleep=clock.sleep)
    assert [f.captured_at for f in _run(rs)] == [123.5]


def test_end_during_open_ends_without_retry() -> None:
    class EndsOnOpen(ScriptedSource):
        def open(self) -> None:
            raise SourceEnded("folder finished")

    clock = FakeClock()
    events: list[tuple[S, S, str]] = []
    rs = ResilientSource("s", EndsOnOpen(opens=[], reads=[]), clock=clock, sleep=clock.sleep,
                         on_state=lambda _s, o, n, d: events.append((o, n, d)))
    assert _run(rs) == []
    assert events == [(S.CONNECTING, S.ENDED, "folder finished")]
    assert clock.sleeps == []


def test_stop_is_honoured_during_backoff() -> None:
    """A source that never opens, a 30 s backoff: setting stop ends the loop promptly
    (bounded join, not a speed assert)."""
    src = ScriptedSource(opens=["lost"] * 1000, reads=[])
    lost = threading.Event()
    rs = ResilientSource("s", src, reconnect=BackoffConfig(initial_s=30.0, max_s=30.0),
                         on_state=lambda _s, _o, n, _d: lost.set() if n == S.LOST else None)
    stop = threading.Event()
    got: list[Frame] = []

    def consume() -> None:
        got.extend(rs.frames_until(stop))

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    assert lost.wait(10.0)
    stop.set()
    t.join(timeout=10.0)
    assert not t.is_alive()
    assert got == []
    assert src.open_calls == 1
    assert rs.state == S.ENDED


def test_stop_between_frames_closes_source() -> None:
    src = ScriptedSource(opens=[], reads=["frame"] * 100)
    rs = ResilientSource("s", src)
    stop = threading.Event()
    it: Iterator[Frame] = rs.frames_until(stop)
    next(it)
    next(it)
    stop.set()
    assert list(it) == []
    assert rs.state == S.ENDED and not src.is_open


def test_consumer_closing_generator_closes_source() -> None:
    src = ScriptedSource(opens=[], reads=["frame"] * 100)
    rs = ResilientSource("s", src)
    gen = rs.frames_until(threading.Event())
    next(gen)
    gen.close()
    assert not src.is_open and src.close_calls >= 1


class PacerClock:
    def __init__(self) -> None:
        self.t = 0.0
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(round(s, 6))
        self.t += s


@pytest.mark.parametrize(
    ("max_fps", "gaps_s", "expected_sleeps"),
    [
        (None, [0.0, 0.0, 0.0], []),
        (10.0, [0.0, 0.0, 0.0], [0.1, 0.1, 0.1]),  # reads back to back: paced at 10/s
        (10.0, [0.05, 0.05, 0.05], [0.05, 0.05, 0.05]),  # work between reads counts
        (10.0, [0.15, 0.0, 0.0], [0.05, 0.1]),  # a little late: catch up to the schedule
        (10.0, [0.5, 0.0], [0.1]),  # far behind: restart the schedule, no burst
    ],
)
def test_pacer(max_fps: float | None, gaps_s: list[float], expected_sleeps: list[float]) -> None:
    c = PacerClock()
    pacer = FramePacer(max_fps, clock=c.now, sleep=c.sleep)
    pacer.wait()
    for gap in gaps_s:
        c.t += gap
        pacer.wait()
    assert c.slept == expected_sleeps
