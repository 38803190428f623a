"""The dynamic batcher: the closing rules as a table over controlled time, FIFO order,
capacity, blocking puts, draining, and the real-time wait."""

from __future__ import annotations

import threading
import time

import pytest

from appliance.pipeline.batcher import Decision, DynamicBatcher, decide

MS = 0.001


@pytest.mark.parametrize(
    ("now", "queued", "oldest", "last", "gap", "adaptive", "draining", "expected"),
    [
        # nothing queued: nothing to do, wait for an arrival
        (0.0, 0, 0.0, 0.0, None, True, False, Decision(0, None)),
        # a full batch leaves at once, capped at max_batch (4)
        (0.0, 4, 0.0, 0.0, None, False, False, Decision(4, None)),
        (0.0, 9, 0.0, 0.0, None, False, False, Decision(4, None)),
        # fixed policy: wait until the oldest has waited max_wait (10 ms)
        (2 * MS, 1, 0.0, 0.0, 1 * MS, False, False, Decision(0, 10 * MS)),
        (10 * MS, 2, 0.0, 5 * MS, 1 * MS, False, False, Decision(2, None)),
        # items that queued while the engine was busy (oldest waited long) leave at once
        (50 * MS, 3, 0.0, 40 * MS, 100 * MS, False, False, Decision(3, None)),
        # adaptive, sparse frames (typical gap 100 ms > wait left): leave at once
        (1 * MS, 1, 0.0, 0.0, 100 * MS, True, False, Decision(1, None)),
        # adaptive, dense frames (gap 1 ms): wait for more, until the deadline
        (1 * MS, 1, 0.0, 0.0, 1 * MS, True, False, Decision(0, 10 * MS)),
        # adaptive, next arrival expected just after the deadline: do not wait
        (3 * MS, 2, 0.0, 2 * MS, 9 * MS, True, False, Decision(2, None)),
        # adaptive without a gap estimate yet: classic rule
        (1 * MS, 1, 0.0, 0.0, None, True, False, Decision(0, 10 * MS)),
        # draining: whatever is queued leaves at once
        (1 * MS, 3, 0.0, 0.0, 1 * MS, False, True, Decision(3, None)),
    ],
)
def test_decide_table(now: float, queued: int, oldest: float, last: float,
                      gap: float | None, adaptive: bool, draining: bool,
                      expected: Decision) -> None:
    assert decide(now, queued, oldest, last, gap, max_batch=4, max_wait_s=10 * MS,
                  adaptive=adaptive, draining=draining) == expected


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(
    ("adaptive", "arrivals_ms", "polls_ms", "expected"),
    [
        # fixed: 3 arrivals 1 ms apart, max_wait 10 ms -> nothing until 10 ms, then all 3
        (False, [0, 1, 2], [5, 9.9, 10], [[], [], [0, 1, 2]]),
        # fixed: 4 arrivals fill the batch (max 4) at once, the 5th waits its own wait
        (False, [0, 1, 2, 3, 4], [3, 5, 14.1], [[0, 1, 2, 3], [], [4]]),
        # adaptive: sparse arrivals (100 ms apart) are dispatched without waiting
        (True, [0, 100, 200], [200], [[0, 1, 2]]),
        (True, [0, 100], [100, 100.5], [[0, 1], []]),
        # adaptive: dense arrivals (1 ms apart) wait for the batch like fixed
        (True, [0, 1, 2], [2, 10], [[], [0, 1, 2]]),
    ],
)
def test_batcher_with_an_injected_clock(adaptive: bool, arrivals_ms: list[float],
                                        polls_ms: list[float],
                                        expected: list[list[int]]) -> None:
    clock = Clock()
    batcher: DynamicBatcher[int] = DynamicBatcher(
        max_batch=4, max_wait_s=10 * MS, capacity=16, adaptive=adaptive, clock=clock)
    start = clock.t
    events = sorted([(a, "offer", i) for i, a in enumerate(arrivals_ms)]
                    + [(p, "poll", j) for j, p in enumerate(polls_ms)],
                    key=lambda e: (e[0], e[1] == "poll"))
    got: list[list[int]] = []
    for at_ms, kind, i in events:
        clock.t = start + at_ms * MS
        if kind == "offer":
            assert batcher.offer(i)
        else:
            batch, _ = batcher.poll()
            got.append([item for _, item in batch])
    assert got == expected


def test_fifo_across_producers_and_capacity_refusals() -> None:
    batcher: DynamicBatcher[tuple[str, int]] = DynamicBatcher(
        max_batch=3, max_wait_s=0.0, capacity=5)
    for i in range(5):
        assert batcher.offer(("a" if i % 2 else "b", i))
    assert not batcher.offer(("a", 99))
    assert batcher.refused == 1 and len(batcher) == 5
    out = [item for _, item in batcher.next_batch(0.1)] + \
        [item for _, item in batcher.next_batch(0.1)]
    assert [i for _, i in out] == [0, 1, 2, 3, 4]
    assert batcher.batches == 2


def test_put_waits_for_room_and_gives_up_on_stop() -> None:
    batcher: DynamicBatcher[int] = DynamicBatcher(max_batch=1, max_wait_s=0.0, capacity=1)
    stop = threading.Event()
    assert batcher.put(1, stop)
    done: list[bool] = []
    t = threading.Thread(target=lambda: done.append(batcher.put(2, stop)))
    t.start()
    time.sleep(0.05)
    assert not done  # blocked: no room
    assert [i for _, i in batcher.next_batch(0.1)] == [1]
    t.join(2)
    assert done == [True] and len(batcher) == 1
    stop.set()
    assert batcher.put(3, stop) is False  # full and stopped
    assert batcher.drain() == [2] and len(batcher) == 0


def test_next_batch_returns_empty_on_timeout_and_draining_flushes() -> None:
    batcher: DynamicBatcher[int] = DynamicBatcher(max_batch=8, max_wait_s=5.0, capacity=8,
                                                  adaptive=False)
    started = time.monotonic()
    assert batcher.next_batch(0.05) == []
    assert time.monotonic() - started < 1.0
    batcher.offer(1)
    batcher.offer(2)
    assert batcher.next_batch(0.05) == []  # would wait 5 s to fill
    batcher.set_draining()
    assert [i for _, i in batcher.next_batch(0.05)] == [1, 2]


def test_a_waiting_engine_is_woken_by_the_item_that_fills_the_batch() -> None:
    batcher: DynamicBatcher[int] = DynamicBatcher(max_batch=2, max_wait_s=5.0, capacity=8,
                                                  adaptive=False)
    batcher.offer(1)
    threading.Timer(0.05, lambda: batcher.offer(2)).start()
    started = time.monotonic()
    assert [i for _, i in batcher.next_batch(2.0)] == [1, 2]
    assert time.monotonic() - started < 1.5


def test_typical_gap_is_the_median_of_recent_arrivals() -> None:
    clock = Clock()
    batcher: DynamicBatcher[int] = DynamicBatcher(max_batch=64, max_wait_s=0.01, capacity=64,
                                                  clock=clock, gap_window=4)
    for i, gap in enumerate([0.0, 0.001, 0.001, 0.1, 0.001]):
        clock.t += gap
        batcher.offer(i)
    assert batcher.typical_gap_s == pytest.approx(0.001)


@pytest.mark.parametrize("kw", [{"max_batch": 0}, {"capacity": 0}, {"max_wait_s": -1.0}])
def test_bad_parameters_are_refused(kw: dict[str, float]) -> None:
    args: dict[str, float] = {"max_batch": 1, "max_wait_s": 0.0, "capacity": 1, **kw}
    with pytest.raises(ValueError):
        DynamicBatcher(**args)  # type: ignore[arg-type]
