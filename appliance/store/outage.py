"""The writer's view of a full data disk: spend the reserve first, then say loudly that
verdicts cannot be committed, and close the outage when a commit works again.

Used by the writer thread only (writer.py). Its alarms (alarm_rows.py: the alarms table
and one event each way) cannot be written while the disk is full, so they wait in
`pending_alarms` and go into the next batch that commits (the `store_unwritable` alarm
is raised at the time the outage began, and ended in that same batch).

Invariants: `unwritable_since` is set only after the reserve is spent (or absent) and a
commit still failed, and is cleared by the next commit that works; every alarm raised
here is ended once the condition ends.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

from appliance.store.alarm_rows import AlarmChange
from appliance.store.reserve import DiskReserve

logger = logging.getLogger(__name__)


class DiskOutage:
    """See the module docstring. `reserve` None: no reserve to spend."""

    def __init__(self, reserve: DiskReserve | None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._reserve = reserve
        self._clock = clock
        self.pending_alarms: list[AlarmChange] = []
        """Alarms for the next batch that commits (cleared by `committed`)."""
        self.unwritable_since: float | None = None
        """Unix time since which batches fail to commit with the reserve already spent
        (None: committing). The store is then not ready and passes are not reported."""

    def failed(self, error: sqlite3.OperationalError) -> bool:
        """A commit failed. True: the reserve was just released, retry at once; False:
        wait (the outage is now recorded)."""
        if self._reserve is not None and "full" in str(error).lower():
            freed = self._reserve.release()
            if freed:
                logger.error("disk full: released the store's %d-byte reserve so verdicts "
                             "keep committing; free space on the data disk", freed)
                self.pending_alarms.append(AlarmChange(
                    self._clock(), "store_reserve_used", True,
                    f"data disk full: released the database's reserve ({freed} bytes); "
                    "verdicts keep committing into it, free space on the data disk",
                    "warning", {"bytes": freed}))
                return True
        if self.unwritable_since is None:
            self.unwritable_since = self._clock()
            logger.critical("the store cannot commit verdicts (%s): the appliance is not "
                            "ready and reports no part as pass until it can", error)
            self.pending_alarms.append(AlarmChange(
                self.unwritable_since, "store_unwritable", True,
                f"the store cannot commit verdicts ({error}); parts are recorded as "
                "uninspected: store_full and the appliance is not ready until it can",
                "critical", {"error": str(error)}))
        return False

    def committed(self) -> None:
        """A batch (with `pending_alarms`) committed: close an outage, and re-create the
        reserve once there is room for it twice over."""
        self.pending_alarms = []
        now = self._clock()
        if self.unwritable_since is not None:
            outage_s = now - self.unwritable_since
            self.unwritable_since = None
            logger.warning("the store commits again after %.1f s", outage_s)
            self.pending_alarms.append(AlarmChange(
                now, "store_unwritable", False,
                f"the store commits again after {outage_s:.1f} s",
                data={"outage_s": round(outage_s, 3)}))
        reserve = self._reserve
        if reserve is not None and reserve.restore_if_room(reserve.size_bytes):
            logger.info("the store's disk reserve is back (%d bytes)", reserve.size_bytes)
            self.pending_alarms.append(AlarmChange(
                now, "store_reserve_used", False,
                f"the database's disk reserve is back ({reserve.size_bytes} bytes)",
                data={"bytes": reserve.size_bytes}))
