"""Which shift is on now (pure): shifts are named local start times, each lasting until
the next one starts; the last one of the day runs past midnight into the first."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, tzinfo

from appliance.panel.config import ShiftConfig


def current_shift(shifts: Sequence[ShiftConfig], now_s: float,
                  tz: tzinfo | None = None) -> tuple[str, float]:
    """(name, start as unix seconds) of the shift running at `now_s`, in time zone `tz`
    (None: the machine's local zone). Raises ValueError without shifts."""
    if not shifts:
        raise ValueError("no shifts configured")
    now = datetime.fromtimestamp(now_s, tz) if tz else datetime.fromtimestamp(now_s).astimezone()
    best: tuple[datetime, str] | None = None
    for day in (now.date() - timedelta(days=1), now.date()):
        for shift in shifts:
            start = datetime.combine(day, shift.start, tzinfo=now.tzinfo)
            if start <= now and (best is None or start > best[0]):
                best = (start, shift.name)
    if best is None:  # cannot happen: yesterday's shifts all started before now
        raise ValueError(f"no shift started before {now}")
    return best[1], best[0].timestamp()
