"""protocol.backoff: the schedule, the retry counter, the stop event, the config bounds."""

from __future__ import annotations

import threading

import pytest
from pydantic import ValidationError

from protocol.backoff import Backoff, BackoffConfig, backoff_delay_s


@pytest.mark.parametrize(
    ("initial_s", "max_s", "expected"),
    [
        (0.5, 30.0, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]),
        (1.0, 5.0, [1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0]),
        (0.25, 0.25, [0.25] * 8),
        (0.1, 10.0, [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0]),
    ],
)
def test_schedule(initial_s: float, max_s: float, expected: list[float]) -> None:
    got = [backoff_delay_s(k, initial_s, max_s) for k in range(1, 9)]
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("retry", [65, 1_000, 10**9])
def test_a_long_outage_stays_at_the_cap(retry: int) -> None:
    assert backoff_delay_s(retry, 0.5, 30.0) == 30.0


@pytest.mark.parametrize("retry", [0, -1])
def test_retries_are_one_based(retry: int) -> None:
    with pytest.raises(ValueError, match="1-based"):
        backoff_delay_s(retry, 0.5, 30.0)


def test_defaults_are_written_once_here() -> None:
    cfg = BackoffConfig()
    assert (cfg.initial_s, cfg.max_s) == (0.5, 30.0)


@pytest.mark.parametrize(
    ("data", "loc", "text"),
    [
        ({"initial_s": 0}, ("initial_s",), "greater than 0"),
        ({"max_s": -1}, ("max_s",), "greater than 0"),
        ({"initial_s": 61}, ("initial_s",), "less than or equal to 60"),
        ({"max_s": 3601}, ("max_s",), "less than or equal to 3600"),
        ({"initial_s": 5, "max_s": 1}, (), "max_s (1.0) must be >= initial_s (5.0)"),
        ({"initial_ms": 5}, ("initial_ms",), "Extra inputs"),
    ],
)
def test_config_bounds(data: dict[str, float], loc: tuple[str, ...], text: str) -> None:
    with pytest.raises(ValidationError) as info:
        BackoffConfig.model_validate(data)
    assert [e["loc"] for e in info.value.errors()] == [loc]
    assert text in str(info.value)


def test_counter_counts_resets_and_caps() -> None:
    b = Backoff(BackoffConfig(initial_s=1.0, max_s=4.0))
    assert b.retries == 0
    assert [b.next_delay_s() for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]
    assert b.retries == 4
    b.reset()
    assert b.retries == 0
    assert b.next_delay_s() == 1.0


def test_wait_returns_at_once_when_stopped() -> None:
    """A set stop event ends a 60 s wait at once and says so; an unset one waits the
    (tiny) delay and says to go on."""
    stop = threading.Event()
    stop.set()
    assert Backoff(BackoffConfig(initial_s=60.0, max_s=60.0)).wait(stop) is True
    assert Backoff(BackoffConfig(initial_s=0.001, max_s=0.001)).wait(threading.Event()) is False


def test_wait_wakes_when_stop_is_set_meanwhile() -> None:
    stop = threading.Event()
    result: list[bool] = []
    waiter = threading.Thread(
        target=lambda: result.append(Backoff(BackoffConfig(initial_s=60.0, max_s=60.0))
                                     .wait(stop)))
    waiter.start()
    stop.set()
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    assert result == [True]
