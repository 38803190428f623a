"""Exponential backoff: the one policy every reconnect and retry loop in lineguard uses.

A `BackoffConfig` is the config section (its defaults are the only place the 0.5 s /
30 s figures are written); a `Backoff` is the running state of one outage.

Invariants:
- the wait before retry `k` (1-based) of one outage is `min(initial_s * 2 ** (k - 1),
  max_s)`; `reset()` starts a new outage at retry 1;
- `wait(stop)` never waits past `stop` being set, and says whether it was.
"""

from __future__ import annotations

import threading

from pydantic import BaseModel, ConfigDict, Field, model_validator


class BackoffConfig(BaseModel):
    """Bounds of an exponential backoff, in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    initial_s: float = Field(0.5, gt=0.0, le=60.0, description="first wait after a failure")
    max_s: float = Field(30.0, gt=0.0, le=3600.0, description="longest wait between tries")

    @model_validator(mode="after")
    def _order(self) -> BackoffConfig:
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s ({self.max_s}) must be >= initial_s ({self.initial_s})")
        return self


def backoff_delay_s(retry: int, initial_s: float, max_s: float) -> float:
    """Seconds to wait before retry number `retry` (1-based) of one outage:
    `initial_s * 2 ** (retry - 1)`, capped at `max_s`. Raises ValueError if retry < 1."""
    if retry < 1:
        raise ValueError(f"retry is 1-based, got {retry}")
    # Cap the exponent so a long outage cannot overflow a float.
    return float(min(initial_s * 2.0 ** min(retry - 1, 64), max_s))


class Backoff:
    """The retry counter of one outage under a `BackoffConfig`. Not thread-safe: one
    loop owns it."""

    def __init__(self, config: BackoffConfig) -> None:
        self._config = config
        self._retry = 0

    @property
    def retries(self) -> int:
        """Retries taken in the current outage (0 after `reset`)."""
        return self._retry

    def next_delay_s(self) -> float:
        """Count one more retry and return the seconds to wait before it."""
        self._retry += 1
        return backoff_delay_s(self._retry, self._config.initial_s, self._config.max_s)

    def wait(self, stop: threading.Event) -> bool:
        """Wait the next delay on `stop`; True if `stop` was set (the caller should quit)."""
        return stop.wait(self.next_delay_s())

    def reset(self) -> None:
        """The outage is over: the next failure waits `initial_s` again."""
        self._retry = 0
