"""Child processes of the fleet demo: started with their output in a log file, stopped
in reverse order with SIGTERM, waited for, killed after a timeout. No orphans: every
child is its own process group leader (`start_new_session`), so Ctrl-C at the terminal
reaches only the orchestrator, which then stops the children in order.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
MOSQUITTO_PACKAGE = "mosquitto"


class FleetError(RuntimeError):
    """The fleet demo cannot go on; the message says why (and what to install)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def lineguard_argv(*args: str) -> list[str]:
    """`lineguard ARGS` as this interpreter runs it (works without an installed script)."""
    return [sys.executable, "-m", "lineguard", *args]


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | subprocess.Popen[str]

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text("utf-8", errors="replace")[-chars:]
        return ""


@dataclass
class Supervisor:
    """Starts children and stops them all (reverse order) on `stop_all`."""

    log_dir: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    stop_timeout_s: float = 20.0
    stop_event: threading.Event | None = None
    """Set (by the CLI's signal handler): a running setup command is stopped."""
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], *, stdin: bytes | None = None) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, env=self.env,
                                       start_new_session=True)
        child = Child(name, argv, log_path, process)
        self.children.append(child)
        logger.info("started %s (pid %d), log %s", name, process.pid, log_path)
        return child

    def run(self, name: str, argv: list[str], *, stdin: str | None = None,
            timeout_s: float = 600.0) -> str:
        """Run a setup command to completion; its output is returned (and logged to a
        file). Raises FleetError with the output's tail when it fails."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # its own session, so a stop of the demo (Ctrl-C, SIGTERM) ends it too, in order
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else
                                subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env,
                                start_new_session=True)
        deadline = time.monotonic() + timeout_s
        pending = stdin
        while True:
            try:
                stdout, stderr = proc.communicate(input=pending, timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pending = None
                stopping = self.stop_event is not None and self.stop_event.is_set()
                if stopping or time.monotonic() > deadline:
                    self.stop(Child(name, argv, self.log_dir / "setup.log", proc))
                    proc.communicate()
                    raise FleetError(f"{name}: stopped" if stopping else
                                     f"{name}: no answer within {timeout_s:.0f} s") from None
        out = stdout + stderr
        with (self.log_dir / "setup.log").open("a", encoding="utf-8") as log:
            log.write(f"$ {' '.join(argv)}\n{out}\n")
        if proc.returncode != 0:
            raise FleetError(f"{name} failed (exit {proc.returncode}):\n{out[-3000:]}")
        return stdout

    def check_alive(self) -> None:
        """Raise FleetError naming a child that exited on its own."""
        for child in self.children:
            rc = child.process.poll()
            if rc is not None:
                raise FleetError(f"{child.name} exited (status {rc}); its log "
                                 f"{child.log_path} ends:\n{child.log_tail()}")

    def stop(self, child: Child) -> int | None:
        """SIGTERM, wait, SIGKILL after `stop_timeout_s`; returns the exit status."""
        p = child.process
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0f s: killed", child.name,
                               self.stop_timeout_s)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=self.stop_timeout_s)
        # anything the child left in its process group goes with it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        return p.returncode

    def stop_all(self) -> dict[str, int | None]:
        codes = {}
        for child in reversed(self.children):
            codes[child.name] = self.stop(child)
        self.children.clear()
        return codes


MOSQUITTO_PLACES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def mosquitto_binary(path: str | None = None,
                     places: tuple[str, ...] = MOSQUITTO_PLACES) -> str:
    """The mosquitto executable (on `path`, default $PATH, or in `places`: Debian puts
    it in /usr/sbin), or FleetError naming the Debian package."""
    found = shutil.which("mosquitto", path=path) or next(
        (p for p in places if os.access(p, os.X_OK)), None)
    if found is None:
        raise FleetError("the MQTT broker `mosquitto` is not installed: install the "
                         f"`{MOSQUITTO_PACKAGE}` package (apt-get install "
                         f"{MOSQUITTO_PACKAGE}) and run again")
    return found


def start_broker(sup: Supervisor, directory: Path, port: int, *,
                 binary: str | None = None, timeout_s: float = 15.0) -> Child:
    """mosquitto on 127.0.0.1:`port`, anonymous (the demo's loopback only)."""
    exe = binary or mosquitto_binary()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    conf = directory / "mosquitto.conf"
    conf.write_text("\n".join([
        f"listener {port} {HOST}", f"user {getpass.getuser()}", "persistence true",
        f"persistence_location {directory / 'data'}/", "log_dest stderr",
        "allow_anonymous true"]) + "\n", "utf-8")
    child = sup.start("mosquitto", [exe, "-c", str(conf)])
    wait_until(lambda: port_open(port), timeout_s, f"mosquitto listening on {port}",
               sup)
    return child


def wait_until(cond: object, timeout_s: float, what: str, sup: Supervisor | None = None,
               poll_s: float = 0.2) -> None:
    """Poll `cond()` until true; FleetError after `timeout_s` (or when a child died)."""
    assert callable(cond)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sup is not None:
            sup.check_alive()
        with contextlib.suppress(OSError):
            if cond():
                return
        time.sleep(poll_s)
    raise FleetError(f"timed out after {timeout_s:.0f} s waiting for {what}")
