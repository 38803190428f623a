"""systemd's notify protocol (sd_notify) and the appliance's watchdog, without libsystemd.

`Notifier` sends datagrams to the socket named by `NOTIFY_SOCKET` (a path, or an
abstract socket spelled with a leading `@`); with no such variable every call is a no-op,
so the same process runs under systemd, in a container or in a terminal.

`Watchdog` is what `lineguard-appliance.service` (`Type=notify`, `WatchdogSec=`) talks
to: `READY=1` once the first verdict is committed by the store's writer, then
`WATCHDOG=1` every `WATCHDOG_USEC / 6` only while the frame path makes progress, and
`STOPPING=1` when the drain begins.

Invariants:
- progress is judged from counters, never from a thread being alive: a ping is sent only
  if, since the last check, verdicts were delivered AND the store's writer committed
  rows, or if nothing is waiting for a verdict (an idle line is healthy; a line with
  frames waiting and no verdicts coming is stalled);
- a stalled pipeline stops the pings within two check intervals (`WATCHDOG_USEC / 3`),
  well within `WatchdogSec / 2`, so systemd restarts the process;
- nothing here blocks the frame path: the watchdog reads counters in its own thread.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 5.0
"""Check interval without `WATCHDOG_USEC` (READY is still sent; pings are harmless)."""


class Notifier:
    """Sends sd_notify datagrams to `NOTIFY_SOCKET` (from `env`, default os.environ)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        name = env.get("NOTIFY_SOCKET") or ""
        self.address: str | bytes | None = None
        if name.startswith("@"):
            self.address = b"\0" + name[1:].encode()
        elif name.startswith("/"):
            self.address = name
        elif name:
            logger.warning("NOTIFY_SOCKET=%r is neither a path nor @abstract; ignored", name)
        usec = env.get("WATCHDOG_USEC") or ""
        pid = env.get("WATCHDOG_PID") or ""
        self.watchdog_s: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, state: str) -> bool:
        """Send one state string (e.g. ``READY=1``). False if not under systemd or the
        send failed (logged: a lost notification must never stop the line)."""
        if self.address is None:
            return False
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX,
                                               socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(state.encode(), self.address)
            except OSError as e:
                logger.warning("sd_notify %s failed: %s", state.split("=")[0], e)
                return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


@dataclass(frozen=True)
class Progress:
    """Counters the watchdog compares between two checks."""

    verdicts: int
    """Verdicts delivered by the verdict book so far."""
    committed: int
    """Rows the store's writer committed so far."""
    waiting: int
    """Frames captured and waiting for a verdict now."""


class Watchdog:
    """See the module docstring. `progress()` reads the counters (cheap, any thread)."""

    def __init__(self, notifier: Notifier, progress: Callable[[], Progress]) -> None:
        self._notifier = notifier
        self._progress = progress
        self.interval_s = notifier.watchdog_s / 6 if notifier.watchdog_s else DEFAULT_INTERVAL_S
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready = False
        self.pings = 0
        self.stalled_checks = 0

    def start(self) -> None:
        if not self._notifier.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()
        logger.info("sd_notify watchdog: check every %.2f s", self.interval_s)

    def stopping(self) -> None:
        """Tell systemd the drain begins (`STOPPING=1`) and stop pinging."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval_s + 1.0)
            self._thread = None
        self._notifier.notify("STOPPING=1")
        self._notifier.close()

    def _run(self) -> None:
        last = self._progress()
        # READY once the first verdict is committed: checked often until then.
        while not self.ready and not self._stop.wait(min(0.05, self.interval_s)):
            now = self._progress()
            if now.verdicts > 0 and now.committed > 0:
                self.ready = self._notifier.notify("READY=1") or True
                last = now
        while not self._stop.wait(self.interval_s):
            now = self._progress()
            if is_progressing(last, now):
                self._notifier.notify("WATCHDOG=1")
                self.pings += 1
            else:
                self.stalled_checks += 1
                logger.warning("frame path stalled: %d frames waiting, no verdict or commit "
                               "in %.2f s; watchdog pings withheld", now.waiting,
                               self.interval_s)
            last = now


def is_progressing(before: Progress, after: Progress) -> bool:
    """Whether the frame path is healthy between two checks: idle (nothing waiting), or
    verdicts delivered and rows committed since `before`."""
    if after.waiting == 0 and after.verdicts == before.verdicts:
        return True
    return after.verdicts > before.verdicts and after.committed > before.committed
