"""Logging for every lineguard command: the one place that sets up the root logger.

Invariants:
- logs always go to stderr, so a command's result on stdout (``--json``) stays clean;
- ``text``: ``time level logger: message`` lines; ``json``: one JSON object per line
  with ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message`` and, when there is
  one, ``exception`` (the formatted traceback), for journald and log shippers;
- ANSI colour codes (Ultralytics colours its messages) are removed from JSON always and
  from text when the stream is not a terminal;
- `configure_logging` owns exactly one root handler (named ``lineguard``): calling it
  again replaces that one and leaves any other (pytest's capture, say) in place.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Final, Literal, TextIO, get_args

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonLogFormatter",
    "LogFormat",
    "LogLevel",
    "LogStreamHandler",
    "PlainTextWriter",
    "configure_logging",
    "strip_ansi",
]

LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LogFormat = Literal["text", "json"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)

_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_HANDLER_NAME = "lineguard"


def strip_ansi(text: str) -> str:
    """`text` without ANSI escape sequences (colours, cursor moves)."""
    return _ANSI_RE.sub("", text)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message[, exception]."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": strip_ansi(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


class LogStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler on `stream`, or on whatever ``sys.stderr`` is when a record is written
    (so a replaced stderr, as under pytest's capture, never leaves it writing to a closed
    file). Text records lose their colour codes unless the stream is a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        logging.Handler.__init__(self)
        self._fixed_stream = stream

    @property
    def stream(self) -> TextIO:
        return sys.stderr if self._fixed_stream is None else self._fixed_stream

    @stream.setter
    def stream(self, value: TextIO) -> None:
        self._fixed_stream = value

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        isatty = getattr(self.stream, "isatty", None)
        return text if callable(isatty) and isatty() else strip_ansi(text)


# Libraries that log routine steps at INFO on every process start (Alembic: each plugin
# it sets up, its dialect and DDL mode); their warnings still show.
_QUIET_LOGGERS: Final = {"alembic.runtime.plugins": "WARNING",
                         "alembic.runtime.migration": "WARNING"}


def configure_logging(
    level: str = "info", log_format: str = "text", stream: TextIO | None = None
) -> None:
    """Make the root logger write records of `level` (one of `LOG_LEVELS`, any case) and
    above in `log_format` (one of `LOG_FORMATS`) to `stream` (default: stderr, looked up
    at each record). Replaces the handler an earlier call installed and leaves others
    alone. Raises ValueError for an unknown level or format (the command lines only
    offer valid ones)."""
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"unknown log level {level!r}; one of {', '.join(LOG_LEVELS)}")
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}; one of {', '.join(LOG_FORMATS)}")
    handler = LogStreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonLogFormatter() if log_format == "json"
                         else logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name, quiet_level in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(quiet_level)


class PlainTextWriter(io.TextIOBase):
    """A text stream for output meant for a terminal (colours, progress bars redrawn
    with carriage returns) that writes to `target` as plain lines: colour codes are
    removed and only the last frame before each newline is kept."""

    def __init__(self, target: TextIO) -> None:
        super().__init__()
        self._target = target
        self._line = ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        pending = self._line + strip_ansi(text)
        *lines, self._line = pending.split("\n")
        for line in lines:
            self._target.write(line.rpartition("\r")[2] + "\n")
        self._line = self._line.rpartition("\r")[2]
        return len(text)

    def flush(self) -> None:
        self._target.flush()

    def close(self) -> None:
        """Write out an unfinished last line (not the target: it is not ours)."""
        if self._line:
            self._target.write(self._line + "\n")
            self._line = ""
        super().close()
