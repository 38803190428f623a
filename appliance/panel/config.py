"""The `panel:` section of the appliance config: the local operator web panel.

Absent means no panel. Localhost by default; binding another address is a deliberate
choice, logged with a warning when TLS is off (`warn_if_exposed`).
"""

from __future__ import annotations

import ipaddress
import logging
from datetime import time as dtime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

logger = logging.getLogger(__name__)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShiftConfig(_Section):
    """One shift: its name and local start time; it lasts until the next shift starts."""

    name: str = Field(min_length=1, max_length=32)
    """Shown on the counters page (`early`, `B`, ...)."""
    start: dtime
    """Local time of day (HH:MM) the shift starts."""


def _default_shifts() -> list[ShiftConfig]:
    return [ShiftConfig(name="early", start=dtime(6, 0)),
            ShiftConfig(name="late", start=dtime(14, 0)),
            ShiftConfig(name="night", start=dtime(22, 0))]


class LoginLimitConfig(_Section):
    """Failed login attempts allowed per client IP and per user name within `window_s`;
    after that every attempt (even with the right password) is answered 429 with
    Retry-After until the window has room again."""

    per_client: int = Field(10, ge=1, le=10_000)
    """Failed attempts from one client IP address."""
    per_user: int = Field(5, ge=1, le=10_000)
    """Failed attempts for one user name, from anywhere."""
    window_s: float = Field(60.0, gt=0.0, le=86_400.0)
    """The sliding window the attempts are counted in."""


class TlsConfig(_Section):
    """HTTPS: PEM certificate chain and private key files."""

    cert_file: Path
    """PEM certificate (chain) the panel presents."""
    key_file: Path
    """PEM private key of the certificate; readable by the appliance's user only."""


class PanelConfig(_Section):
    """The operator panel (appliance/panel), served by the appliance process."""

    host: str = "127.0.0.1"
    """Address to bind. Anything but loopback exposes the panel to the network: use TLS."""
    port: int = Field(8080, ge=0, le=65_535)
    """TCP port; 0 picks a free one (tests), reported in the log."""
    tls: TlsConfig | None = None
    """HTTPS with these files (the session cookie is then `Secure`); absent: plain HTTP,
    fine on loopback."""
    shifts: list[ShiftConfig] = Field(default_factory=_default_shifts, min_length=1,
                                      max_length=12)
    """Shift start times (local time); the counters page shows the current shift."""
    session_lifetime_s: float = Field(12 * 3600.0, ge=60.0, le=7 * 86_400.0)
    """A login lasts this long (a shift and some)."""
    max_sessions: int = Field(256, ge=1, le=100_000)
    """Sessions held at once; the oldest is dropped to make room."""
    login_limit: LoginLimitConfig = Field(default_factory=LoginLimitConfig)
    live_rate_hz: float = Field(10.0, ge=1.0, le=30.0)
    """Most live-view frames per second per station (JPEG encodes are cached this long)."""
    live_jpeg_quality: int = Field(80, ge=20, le=95)
    """JPEG quality of the live view's frames."""
    ready_verdict_age_s: float = Field(5.0, gt=0.0, le=3600.0)
    """/readyz is 503 when no `pass` or `fail` verdict was made in this many seconds."""
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    """Largest request body accepted (413 above)."""
    thresholds_file: Path | None = None
    """Where the engineers' class threshold overrides persist; absent:
    `<data_dir>/thresholds.json`."""

    @model_validator(mode="after")
    def _check(self) -> PanelConfig:
        starts = [s.start for s in self.shifts]
        if len(set(starts)) != len(starts):
            raise ValueError("shift start times must differ")
        names = [s.name for s in self.shifts]
        if len(set(names)) != len(names):
            raise ValueError("shift names must be unique")
        return self

    def is_loopback(self) -> bool:
        """Whether `host` is a loopback address (or `localhost`)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def warn_if_exposed(self) -> bool:
        """Log a warning (and return True) when the panel listens beyond loopback
        without TLS: passwords and session cookies would cross the network in clear."""
        if self.is_loopback() or self.tls is not None:
            return False
        logger.warning("panel listens on %s:%d without TLS: passwords and session cookies "
                       "travel in clear text; set panel.tls or bind 127.0.0.1",
                       self.host, self.port)
        return True
